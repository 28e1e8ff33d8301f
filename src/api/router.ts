/**
 * The route type and a small path matcher. A route is data (method, path, schemas, doc text) plus
 * one handler; the HTTP server validates with the schemas, and the OpenAPI document is built from
 * the same objects, so the table in routes.ts is the single source of both.
 */
import type { Readable } from 'node:stream';
import type { z } from 'zod';
import type { StorageArrayApi } from '../array/types.js';

export type HttpMethod = 'GET' | 'POST' | 'PATCH' | 'DELETE';

/** What /metrics renders; the daemon owns the registry (src/daemon/metrics.ts). */
export interface MetricsSource {
  readonly contentType: string;
  render(): Promise<string>;
}

export interface RouteContext {
  array: StorageArrayApi;
  metrics: MetricsSource | undefined;
  version: string;
  openApiDocument(): object;
  /** Aborted when the server closes: long polls (GET /jobs/:id?waitMs=) answer at once instead of holding shutdown. */
  closing: AbortSignal;
}

/** A handler answer that is not JSON (Prometheus text). */
export class TextResponse {
  constructor(
    readonly contentType: string,
    readonly text: string,
  ) {}
}

/** A handler answer whose body is a byte stream (a backup going to the CLI's stdout). */
export class StreamResponse {
  constructor(
    readonly contentType: string,
    readonly headers: Record<string, string>,
    readonly body: Readable,
  ) {}
}

export interface RouteSuccess {
  status: 200 | 201 | 202 | 204;
  description: string;
  /** Response body schema (JSON); absent for 204 and for text responses. */
  schema?: z.ZodType;
  /** Set for non-JSON answers. */
  contentType?: string;
}

interface RouteFields {
  method: HttpMethod;
  /** Path under /api/v1 with `:param` segments, e.g. "/volumes/:name". */
  path: string;
  operationId: string;
  tag: string;
  summary: string;
  /** Routes reachable without the bearer token (only the health check). */
  public?: boolean;
  /**
   * The request body is a byte stream of this content type, handed to the handler unread as
   * `input.stream` (a backup coming from the CLI's stdin); options then travel in the query.
   */
  streamedBody?: string;
  success: RouteSuccess;
  /** Error statuses this route may answer with, for the document (401 is added for non-public routes). */
  errorStatuses: number[];
}

export interface RouteSpec<P extends z.ZodType, B extends z.ZodType, Q extends z.ZodType> extends RouteFields {
  params?: P;
  body?: B;
  /** Query-string parameters (an object of optional fields); routes without it ignore the query. */
  query?: Q;
  handle(input: { params: z.output<P>; body: z.output<B>; query: z.output<Q>; stream: Readable }, context: RouteContext): unknown;
}

/** The type-erased form kept in the table. */
export interface Route extends RouteFields {
  params?: z.ZodType;
  body?: z.ZodType;
  query?: z.ZodType;
  handle(input: { params: unknown; body: unknown; query: unknown; stream: Readable }, context: RouteContext): unknown;
}

/** Keeps the handler's input types tied to its schemas, then erases them for the table. */
export function defineRoute<P extends z.ZodType = z.ZodUndefined, B extends z.ZodType = z.ZodUndefined, Q extends z.ZodType = z.ZodUndefined>(
  spec: RouteSpec<P, B, Q>,
): Route {
  return spec as unknown as Route;
}

export type RouteMatch =
  | { kind: 'found'; route: Route; rawParams: Record<string, string> }
  | { kind: 'wrong-method'; allowedMethods: HttpMethod[] }
  | { kind: 'not-found' };

export class Router {
  private readonly compiled: { route: Route; segments: string[] }[];

  constructor(readonly routes: readonly Route[]) {
    this.compiled = routes.map((route) => ({ route, segments: splitPath(route.path) }));
  }

  match(method: string, path: string): RouteMatch {
    const requestSegments = splitPath(path);
    const allowedMethods: HttpMethod[] = [];
    for (const { route, segments } of this.compiled) {
      const rawParams = matchSegments(segments, requestSegments);
      if (!rawParams) continue;
      if (route.method === method) return { kind: 'found', route, rawParams };
      allowedMethods.push(route.method);
    }
    return allowedMethods.length > 0 ? { kind: 'wrong-method', allowedMethods } : { kind: 'not-found' };
  }
}

function splitPath(path: string): string[] {
  return path.split('/').filter((segment) => segment.length > 0);
}

function matchSegments(pattern: string[], request: string[]): Record<string, string> | undefined {
  if (pattern.length !== request.length) return undefined;
  const params: Record<string, string> = {};
  for (let index = 0; index < pattern.length; index++) {
    const expected = pattern[index]!;
    const actual = request[index]!;
    if (expected.startsWith(':')) {
      const decoded = safeDecode(actual);
      if (decoded === undefined) return undefined;
      params[expected.slice(1)] = decoded;
    } else if (expected !== actual) {
      return undefined;
    }
  }
  return params;
}

function safeDecode(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}
