/** `thinarray openapi`: prints the API's OpenAPI document without a daemon (docs/openapi.json is made with it). */
import type { Command } from 'commander';
import { buildOpenApiDocument } from '../../api/openapi.js';
import { ROUTES } from '../../api/routes.js';
import { thinarrayVersion } from '../../daemon/version.js';
import type { CliIo } from '../context.js';

export function registerOpenApiCommand(program: Command, io: CliIo): void {
  program
    .command('openapi')
    .description('print the HTTP API description (OpenAPI 3.1 JSON)')
    .action(() => io.stdout(JSON.stringify(buildOpenApiDocument(ROUTES, thinarrayVersion()), null, 2)));
}
