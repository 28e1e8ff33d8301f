/** Builds the OpenAPI 3.1 document from the route table and its zod schemas (no hand-kept copy). */
import { z } from 'zod';
import { API_PREFIX } from './routes.js';
import { ErrorResponseSchema } from './schemas.js';
import type { Route } from './router.js';

const STATUS_TEXT: Record<number, string> = {
  400: 'Invalid input; `error.field` names the field.',
  401: 'Missing or wrong bearer token.',
  404: 'No such volume, job or route.',
  409: 'Conflict: the name exists, the volume is busy or read-only, or the job has already finished.',
  413: 'Request body larger than the limit.',
  507: 'The pool has no space left.',
};

type JsonSchema = Record<string, unknown>;

export function buildOpenApiDocument(routes: readonly Route[], version: string): object {
  const paths: Record<string, Record<string, object>> = {};
  for (const route of routes) {
    const openApiPath = API_PREFIX + route.path.replace(/:([A-Za-z]+)/g, '{$1}');
    paths[openApiPath] ??= {};
    paths[openApiPath][route.method.toLowerCase()] = buildOperation(route);
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'thinarray',
      version,
      description:
        'HTTP API of the thinarray daemon. Every route except GET /api/v1/health needs ' +
        '`Authorization: Bearer <token>`; the token is in `<home>/token`. Sizes accept bytes or strings such as "10G".',
    },
    servers: [{ url: 'http://127.0.0.1:7480' }],
    security: [{ bearerAuth: [] }],
    tags: [{ name: 'pool' }, { name: 'volumes' }, { name: 'jobs' }, { name: 'array' }, { name: 'daemon' }],
    paths,
    components: {
      securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } },
      schemas: { Error: toJsonSchema(ErrorResponseSchema, 'output') },
    },
  };
}

function buildOperation(route: Route): object {
  const operation: Record<string, unknown> = {
    operationId: route.operationId,
    tags: [route.tag],
    summary: route.summary,
  };
  if (route.public) operation['security'] = [];
  const parameters = [...(route.params ? buildParameters(route.params, 'path') : []), ...(route.query ? buildParameters(route.query, 'query') : [])];
  if (parameters.length > 0) operation['parameters'] = parameters;
  if (route.body) {
    operation['requestBody'] = {
      required: true,
      content: { 'application/json': { schema: toJsonSchema(route.body, 'input') } },
    };
  }
  if (route.streamedBody !== undefined) {
    operation['requestBody'] = { required: true, content: { [route.streamedBody]: { schema: { type: 'string', format: 'binary' } } } };
  }
  operation['responses'] = buildResponses(route);
  return operation;
}

function buildParameters(objectZodSchema: z.ZodType, location: 'path' | 'query'): object[] {
  const objectSchema = toJsonSchema(objectZodSchema, 'input');
  const properties = (objectSchema['properties'] ?? {}) as Record<string, JsonSchema>;
  const required = new Set((objectSchema['required'] ?? []) as string[]);
  return Object.entries(properties).map(([name, schema]) => {
    const { description, ...rest } = schema;
    return { name, in: location, required: location === 'path' || required.has(name), description, schema: rest };
  });
}

function buildResponses(route: Route): Record<string, object> {
  const responses: Record<string, object> = {};
  const { success } = route;
  if (success.contentType) {
    responses[String(success.status)] = {
      description: success.description,
      content: { [success.contentType]: { schema: { type: 'string' } } },
    };
  } else if (success.schema) {
    responses[String(success.status)] = {
      description: success.description,
      content: { 'application/json': { schema: toJsonSchema(success.schema, 'output') } },
    };
  } else {
    responses[String(success.status)] = { description: success.description };
  }
  const errorStatuses = new Set(route.errorStatuses);
  if (!route.public) errorStatuses.add(401);
  if (route.body) errorStatuses.add(400).add(413);
  for (const status of [...errorStatuses].sort()) {
    responses[String(status)] = {
      description: STATUS_TEXT[status] ?? 'Error.',
      content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
    };
  }
  return responses;
}

/** JSON Schema 2020-12 (the dialect of OpenAPI 3.1) without the per-schema `$schema` and `id` keys. */
function toJsonSchema(schema: z.ZodType, io: 'input' | 'output'): JsonSchema {
  const json = z.toJSONSchema(schema, { target: 'draft-2020-12', io, unrepresentable: 'any' }) as JsonSchema;
  delete json['$schema'];
  delete json['id'];
  return json;
}
