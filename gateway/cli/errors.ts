// How the CLI fails: every expected failure (bad input, an unreachable gateway, an HTTP error,
// a malformed model, a port in use) becomes one line `paraserve: <reason>` and a non-zero
// exit. Errors nobody anticipated say so; PARASERVE_DEBUG=1 adds the stack to any error.

/** A failure the CLI anticipated; its message is the whole line the operator sees. */
export class CliError extends Error {
  override name = 'CliError';
  constructor(
    message: string,
    readonly exitCode: number = 1,
  ) {
    super(message);
  }
}

/**
 * JavaScript's own error classes mean a bug in paraserve; every other error (paraserve's
 * named errors, Node system errors, libraries' errors) carries a message meant for the operator.
 */
const BUG_NAMES = new Set(['TypeError', 'ReferenceError', 'SyntaxError', 'RangeError', 'EvalError', 'URIError']);

export interface ErrorReport {
  /** Printed as `paraserve: <line>`. */
  line: string;
  /** Printed after the line when PARASERVE_DEBUG is set; null for non-Error throws. */
  stack: string | null;
  exitCode: number;
}

/** Decides what the operator sees for an error that reached the top of a command. */
export function reportError(e: unknown): ErrorReport {
  if (!(e instanceof Error)) {
    return { line: String(e), stack: null, exitCode: 1 };
  }
  const firstLine = e.message.split('\n')[0] || e.name;
  const exitCode = e instanceof CliError ? e.exitCode : 1;
  if (!BUG_NAMES.has(e.name)) {
    return { line: firstLine, stack: e.stack ?? null, exitCode };
  }
  return { line: `internal error: ${firstLine} (PARASERVE_DEBUG=1 shows the stack)`, stack: e.stack ?? null, exitCode };
}

/** Commander's own messages ("error: unknown option '--x'") in the CLI's one-line form. */
export function formatCommanderError(message: string): string {
  const line = message.trim().replace(/^error:\s*/, '').split('\n')[0] ?? '';
  return `paraserve: ${line}\n`;
}
