#!/usr/bin/env node
// The `paraserve` command line: one entry point for operators — run the daemons (`up`,
// `gateway`, `worker`, `store serve`), manage the registry through the admin API (`models`,
// `workers`, `keys`, `status`) and write test checkpoints (`make-model`). Every failure ends
// as one line `paraserve: <reason>` and a non-zero exit.
import { reportError } from './errors.js';
import { buildProgram } from './program.js';

// An empty PARASERVE_* variable (as env files leave them) means unset, not "".
for (const [name, value] of Object.entries(process.env)) {
  if (name.startsWith('PARASERVE_') && value === '') delete process.env[name];
}

try {
  await buildProgram().parseAsync(process.argv);
  // Daemon commands return once stopped; keep-alive sockets must not hold the process open.
  process.exit(process.exitCode ?? 0);
} catch (e) {
  const report = reportError(e);
  process.stderr.write(`paraserve: ${report.line}\n`);
  if (report.stack !== null && process.env.PARASERVE_DEBUG !== undefined) {
    process.stderr.write(`${report.stack}\n`);
  }
  process.exit(report.exitCode);
}
