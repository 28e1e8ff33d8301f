/** `thinarray check [--repair]`: exits 1 when problems remain after the run. */
import type { Command } from 'commander';
import type { CheckReport } from '../../array/types.js';
import { CliContext, type CliIo } from '../context.js';
import { CliError, EXIT_CODES } from '../errors.js';

export function registerCheckCommand(program: Command, io: CliIo): void {
  program
    .command('check')
    .description('check metadata consistency (double-mapped, leaked extents); --repair fixes what it can')
    .option('--repair', 'return leaked extents to the pool and fix what can be fixed')
    .action(async (options: { repair?: boolean }, command: Command) => {
      const context = CliContext.of(command, io);
      const report = await context.api().post<CheckReport>('/check', { repair: options.repair === true });
      context.output(report, formatCheckReport);
      const remaining = report.problems.length - report.repaired;
      if (!report.ok && remaining > 0) {
        throw new CliError(`check found ${remaining} problem(s) not repaired${options.repair ? '' : ' (run check --repair)'}`, EXIT_CODES.failed);
      }
    });
}

function formatCheckReport(report: CheckReport): string {
  const summary = `checked ${report.volumesChecked} volume(s), ${report.mappedExtents} mapped extent(s): `;
  if (report.problems.length === 0) return summary + 'no problems';
  const lines = report.problems.map((problem) => `  ${problem.kind}: ${problem.detail}`);
  return `${summary}${report.problems.length} problem(s), ${report.repaired} repaired\n${lines.join('\n')}`;
}
