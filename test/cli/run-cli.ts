// Shared by the CLI tests (not a test itself): runs the built CLI (`dist/gateway/cli/main.js`,
// which `npm test` builds first) as a child process, the way operators meet it.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const cliPath = fileURLToPath(new URL('../../dist/gateway/cli/main.js', import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * The environment of a CLI child: no PARASERVE_* from the caller's shell, and no NODE_OPTIONS
 * (tap's loaders would slow every start), plus extra.
 */
export function cliEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PARASERVE_') && k !== 'NODE_OPTIONS'));
  return { ...clean, ...extra };
}

export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliPath, ...args], { env: cliEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export const missingBuild = `${cliPath} is missing: run \`npm run build\` first (\`npm test\` does)`;
