/**
 * The HTTP API server (node:http): bearer-token auth, a bounded JSON body reader, validation
 * with the route's zod schemas, and one mapping from errors to `{"error": {code, message, field}}`.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { z } from 'zod';
import { ERROR_CODES, isThinError } from '../lib/errors.js';
import { LIMITS } from '../lib/limits.js';
import type { Logger } from '../lib/log.js';
import type { StorageArrayApi } from '../array/types.js';
import { buildOpenApiDocument } from './openapi.js';
import { Router, StreamResponse, TextResponse, type MetricsSource, type Route, type RouteContext } from './router.js';
import { API_PREFIX, ROUTES } from './routes.js';

export interface ApiServerOptions {
  array: StorageArrayApi;
  /** The bearer token every non-public route requires. */
  token: string;
  logger: Logger;
  metrics?: MetricsSource;
  version: string;
}

/** Errors of the HTTP layer itself (routing, auth, body); array errors arrive as ThinError. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

interface Answer {
  status: number;
  headers: Record<string, string>;
  text: string | undefined;
}

interface StreamAnswer {
  status: number;
  headers: Record<string, string>;
  stream: Readable;
}

/**
 * After a 413 we keep draining the rest of the body so the client can read our answer
 * (closing mid-upload makes many clients report a reset instead); past this we hang up.
 */
const DRAIN_AFTER_REJECT_BYTES_MAX = 64 * LIMITS.apiBodyBytesMax;

export class ApiServer {
  private readonly server: Server;
  private readonly router = new Router(ROUTES);
  private readonly tokenDigest: Buffer;
  private readonly context: RouteContext;
  private openApiDocument: object | undefined;
  private readonly closing = new AbortController();

  constructor(private readonly options: ApiServerOptions) {
    this.tokenDigest = sha256(options.token);
    this.context = {
      array: options.array,
      metrics: options.metrics,
      version: options.version,
      openApiDocument: () => (this.openApiDocument ??= buildOpenApiDocument(ROUTES, options.version)),
      closing: this.closing.signal,
    };
    this.server = createServer((request, response) => void this.serve(request, response));
    // No whole-request deadline: a restore from the CLI's stdin (POST /restores/stream) sends its
    // body for as long as the backup is long. Headers still have headersTimeout (60 s), and JSON
    // bodies are bounded in size (LIMITS.apiBodyBytesMax) and need the token first.
    this.server.requestTimeout = 0;
  }

  /** Port 0 picks a free port; the answer has the real one. */
  listen(host: string, port: number): Promise<{ host: string; port: number; url: string }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const address = this.server.address() as AddressInfo;
        const urlHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
        resolve({ host: address.address, port: address.port, url: `http://${urlHost}:${address.port}` });
      });
    });
  }

  /** Stops accepting, lets requests in progress finish, then drops idle keep-alive connections. */
  close(): Promise<void> {
    this.closing.abort();
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
  }

  private async serve(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const startedNs = process.hrtime.bigint();
    let answer: Answer | StreamAnswer;
    try {
      answer = await this.dispatch(request);
    } catch (error) {
      answer = this.errorAnswer(error, request);
    }
    if ('stream' in answer) await this.sendStream(response, answer);
    else this.send(response, answer);
    // A body not read to its end (too large, or a streamed restore that failed early): after the
    // answer, the rest is drained, or the connection hung up when too much keeps coming.
    if (!request.complete) drainOrHangUp(request);
    this.logRequest(request, answer.status, Number(process.hrtime.bigint() - startedNs) / 1e6);
  }

  /** Headers now, then the body as the handler's stream produces it; a client gone midway destroys the stream (its producer sees the failure). */
  private async sendStream(response: ServerResponse, answer: StreamAnswer): Promise<void> {
    response.writeHead(answer.status, answer.headers);
    await pipeline(answer.stream, response).catch(() => undefined);
  }

  private async dispatch(request: IncomingMessage): Promise<Answer | StreamAnswer> {
    const method = request.method ?? 'GET';
    const url = new URL(request.url ?? '/', 'http://localhost');
    const pathname = url.pathname;
    const match = pathname.startsWith(API_PREFIX + '/')
      ? this.router.match(method, pathname.slice(API_PREFIX.length))
      : ({ kind: 'not-found' } as const);
    // Authenticate before saying whether a route exists: without the token, nothing is revealed.
    if (!(match.kind === 'found' && match.route.public)) this.authenticate(request);
    if (match.kind === 'not-found') throw new HttpError(404, 'NOT_FOUND', `no route ${method} ${pathname}`);
    if (match.kind === 'wrong-method') {
      throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${method} is not allowed on ${pathname} (allowed: ${match.allowedMethods.join(', ')})`, undefined, {
        allow: match.allowedMethods.join(', '),
      });
    }
    const { route, rawParams } = match;
    if (route.streamedBody !== undefined && !isContentType(request, route.streamedBody)) {
      throw new HttpError(415, 'UNSUPPORTED', `this route reads a ${route.streamedBody} request body (got ${request.headers['content-type'] ?? 'no content-type'})`);
    }
    const rawBody = route.body ? await readJsonBody(request) : undefined;
    const params = route.params ? validate(route.params, rawParams) : undefined;
    const body = route.body ? validate(route.body, rawBody) : undefined;
    const query = route.query ? validate(route.query, Object.fromEntries(url.searchParams)) : undefined;
    const result = await route.handle({ params, body, query, stream: request }, this.context);
    if (result instanceof StreamResponse) {
      return { status: route.success.status, headers: { 'content-type': result.contentType, ...result.headers }, stream: result.body };
    }
    return shapeSuccess(route, result);
  }

  private authenticate(request: IncomingMessage): void {
    const header = request.headers.authorization ?? '';
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    // Compare digests in constant time so the token cannot be guessed byte by byte from timings.
    if (!match || !timingSafeEqual(sha256(match[1]!), this.tokenDigest)) {
      throw new HttpError(401, 'UNAUTHORIZED', match ? 'wrong bearer token' : 'missing bearer token (Authorization: Bearer <token from <home>/token>)', undefined, {
        'www-authenticate': 'Bearer',
      });
    }
  }

  private errorAnswer(error: unknown, request: IncomingMessage): Answer {
    if (error instanceof HttpError) {
      return jsonAnswer(error.status, errorBody(error.code, error.message, error.field), error.headers);
    }
    if (isThinError(error)) {
      return jsonAnswer(ERROR_CODES[error.code].httpStatus, errorBody(error.code, error.message, error.field));
    }
    this.options.logger.error({ err: error, method: request.method, url: request.url }, 'api: unexpected error');
    return jsonAnswer(500, errorBody('INTERNAL', 'internal error (details in the daemon log)'));
  }

  private send(response: ServerResponse, answer: Answer): void {
    response.writeHead(answer.status, answer.headers);
    response.end(answer.text);
  }

  private logRequest(request: IncomingMessage, status: number, durationMs: number): void {
    const fields = { method: request.method, url: request.url, status, durationMs: Math.round(durationMs * 100) / 100 };
    if (request.method === 'GET' && status < 400) this.options.logger.debug(fields, 'api request');
    else this.options.logger.info(fields, 'api request');
  }
}

function isContentType(request: IncomingMessage, expected: string): boolean {
  return (request.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase() === expected;
}

function shapeSuccess(route: Route, result: unknown): Answer {
  if (result instanceof TextResponse) {
    return { status: route.success.status, headers: { 'content-type': result.contentType }, text: result.text };
  }
  if (route.success.status === 204) return { status: 204, headers: {}, text: undefined };
  return jsonAnswer(route.success.status, result);
}

function jsonAnswer(status: number, body: unknown, headers: Record<string, string> = {}): Answer {
  return { status, headers: { 'content-type': 'application/json; charset=utf-8', ...headers }, text: JSON.stringify(body) + '\n' };
}

function errorBody(code: string, message: string, field?: string): object {
  return { error: field === undefined ? { code, message } : { code, message, field } };
}

/** Turns the first zod issue into an INVALID_ARGUMENT naming the field. */
function validate<T extends z.ZodType>(schema: T, value: unknown): z.output<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const unknownKey = issue.code === 'unrecognized_keys' ? issue.keys[0] : undefined;
  const path = [...issue.path.map(String), ...(unknownKey === undefined ? [] : [unknownKey])];
  const field = path.length > 0 ? path.join('.') : undefined;
  const message = unknownKey !== undefined ? 'unknown field' : issue.message;
  throw new HttpError(400, 'INVALID_ARGUMENT', field === undefined ? message : `${field}: ${message}`, field);
}

/** Reads at most LIMITS.apiBodyBytesMax bytes; an empty body counts as `{}`. */
async function readJsonBody(request: IncomingMessage): Promise<unknown> {
  const text = await readBodyText(request);
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new HttpError(400, 'INVALID_ARGUMENT', `request body is not valid JSON: ${(error as Error).message}`);
  }
}

/**
 * Events rather than `for await`: leaving an async iterator destroys the stream, and the
 * socket with it, before the 413 answer could be written.
 */
function readBodyText(request: IncomingMessage): Promise<string> {
  const declaredBytes = Number(request.headers['content-length'] ?? 0);
  if (declaredBytes > LIMITS.apiBodyBytesMax) return Promise.reject(bodyTooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let receivedBytes = 0;
    const onData = (chunk: Buffer): void => {
      receivedBytes += chunk.length;
      if (receivedBytes > LIMITS.apiBodyBytesMax) {
        cleanup();
        request.pause();
        reject(bodyTooLarge());
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(Buffer.concat(chunks).toString('utf8'));
    };
    const onError = (error: Error): void => {
      cleanup();
      reject(error);
    };
    const cleanup = (): void => {
      request.off('data', onData).off('end', onEnd).off('error', onError);
    };
    request.on('data', onData).on('end', onEnd).on('error', onError);
  });
}

function bodyTooLarge(): HttpError {
  return new HttpError(413, 'BODY_TOO_LARGE', `request body larger than ${LIMITS.apiBodyBytesMax} bytes`, undefined, { connection: 'close' });
}

function drainOrHangUp(request: IncomingMessage): void {
  let drainedBytes = 0;
  request.on('data', (chunk: Buffer) => {
    drainedBytes += chunk.length;
    if (drainedBytes > DRAIN_AFTER_REJECT_BYTES_MAX) request.socket.destroy();
  });
  request.resume();
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}
