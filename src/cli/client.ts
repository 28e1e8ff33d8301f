/**
 * The CLI's HTTP client: finds the daemon (--api, THINARRAY_API, <home>/daemon.json, default)
 * and the token (--token, THINARRAY_TOKEN, <home>/token), and turns every failure into a
 * CliError whose message says where it tried.
 */
import { existsSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import { homePaths, readDaemonInfo, readToken, resolveHome } from '../daemon/home.js';
import { CliError, EXIT_CODES } from './errors.js';

export const DEFAULT_API_URL = 'http://127.0.0.1:7480';
const API_PREFIX = '/api/v1';

export interface GlobalOptions {
  home?: string;
  api?: string;
  token?: string;
  json?: boolean;
}

export interface ApiTarget {
  url: string;
  /** Where the URL came from, for error messages ("--api", "/x/daemon.json", …). */
  urlSource: string;
  token: string | undefined;
  tokenSource: string;
}

export function resolveApiTarget(options: GlobalOptions, environment: NodeJS.ProcessEnv = process.env): ApiTarget {
  const paths = homePaths(resolveHome(options.home, environment));
  const { url, urlSource } = resolveApiUrl(options, environment, paths.daemonInfo);
  const { token, tokenSource } = resolveTokenValue(options, environment, paths.token);
  return { url: url.replace(/\/+$/, ''), urlSource, token, tokenSource };
}

function resolveApiUrl(options: GlobalOptions, environment: NodeJS.ProcessEnv, daemonInfoPath: string): { url: string; urlSource: string } {
  if (options.api) return { url: options.api, urlSource: '--api' };
  if (environment['THINARRAY_API']) return { url: environment['THINARRAY_API'], urlSource: 'THINARRAY_API' };
  const info = readDaemonInfo(daemonInfoPath);
  if (info?.api?.url) return { url: info.api.url, urlSource: daemonInfoPath };
  return { url: DEFAULT_API_URL, urlSource: `default; no ${daemonInfoPath}` };
}

function resolveTokenValue(options: GlobalOptions, environment: NodeJS.ProcessEnv, tokenPath: string): { token: string | undefined; tokenSource: string } {
  if (options.token) return { token: options.token, tokenSource: '--token' };
  if (environment['THINARRAY_TOKEN']) return { token: environment['THINARRAY_TOKEN'], tokenSource: 'THINARRAY_TOKEN' };
  if (!existsSync(tokenPath)) return { token: undefined, tokenSource: `${tokenPath} (missing)` };
  try {
    return { token: readToken(tokenPath), tokenSource: tokenPath };
  } catch (error) {
    throw new CliError(`cannot read the token ${tokenPath}: ${(error as Error).message}`, EXIT_CODES.failed);
  }
}

export class ApiClient {
  constructor(private readonly target: ApiTarget) {}

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  patch<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, body);
  }

  delete(path: string): Promise<void> {
    return this.request<void>('DELETE', path);
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const url = this.target.url + API_PREFIX + path;
    const headers = this.#headers(body === undefined ? undefined : 'application/json');
    let response: Response;
    try {
      response = await fetch(url, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    } catch (error) {
      throw this.unreachable(error);
    }
    const text = await response.text();
    if (!response.ok) throw this.apiFailure(response.status, text);
    if (text === '') return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new CliError(`unexpected answer from ${url} (not JSON); is that a thinarray daemon?`, EXIT_CODES.failed);
    }
  }

  /**
   * A request whose body or answer is a byte stream (`-` media). Resolves with the answer once its
   * headers are in (the caller reads `body`); an error answer becomes a CliError as usual.
   * node:http rather than fetch: fetch gives up after 300 s without headers or body bytes, and a
   * stream may rightly be silent that long (a job queued behind others, a long final sync).
   */
  stream(method: string, path: string, body: { json: unknown } | { bytes: Readable; contentType: string }, signal?: AbortSignal): Promise<StreamAnswer> {
    const url = this.target.url + API_PREFIX + path;
    const headers = this.#headers('json' in body ? 'application/json' : body.contentType);
    return new Promise((resolve, reject) => {
      const request = httpRequest(url, { method, headers, ...(signal === undefined ? {} : { signal }) }, (response) => {
        const status = response.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          resolve({ header: (name) => headerText(response.headers[name]), body: response });
          return;
        }
        readAll(response).then((text) => reject(this.apiFailure(status, text)), reject);
      });
      request.on('error', (error) => reject(signal?.aborted ? error : this.unreachable(error)));
      if ('json' in body) {
        request.end(JSON.stringify(body.json));
      } else {
        // The body is sent as it is read (a pipe may go on until its writer ends). An early answer
        // (a refusal) may close the connection under it: that is the answer's business, not an error.
        body.bytes.pipe(request).on('error', () => undefined);
      }
    });
  }

  /** The bearer token, when there is one, and the body's content type. */
  #headers(contentType: string | undefined): Record<string, string> {
    const headers: Record<string, string> = {};
    if (this.target.token !== undefined) headers['authorization'] = `Bearer ${this.target.token}`;
    if (contentType !== undefined) headers['content-type'] = contentType;
    return headers;
  }

  private unreachable(error: unknown): CliError {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    const reason = cause?.code ?? cause?.message ?? (error as Error).message;
    return new CliError(
      `cannot reach the thinarray daemon at ${this.target.url} (from ${this.target.urlSource}): ${reason}; is "thinarray serve" running?`,
      EXIT_CODES.unreachable,
    );
  }

  private apiFailure(status: number, text: string): CliError {
    let apiError: { code?: string; message?: string } | undefined;
    try {
      apiError = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
    } catch {
      apiError = undefined;
    }
    if (status === 401) {
      const why = this.target.token === undefined ? 'no token' : 'the token was refused';
      return new CliError(`${why} (token from ${this.target.tokenSource}); use --token or --home`, EXIT_CODES.failed, 'UNAUTHORIZED');
    }
    const message = apiError?.message ?? `HTTP ${status} from ${this.target.url}`;
    return new CliError(message, EXIT_CODES.failed, apiError?.code);
  }
}

/** What ApiClient.stream answers (a 2xx): headers by (lower-case) name, and the body to read. */
export interface StreamAnswer {
  header(name: string): string | undefined;
  body: IncomingMessage;
}

function headerText(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(', ') : value;
}

/** A whole (small) answer body as text. */
export async function readAll(stream: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
