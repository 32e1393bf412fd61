// Everything the CLI prints. Data goes to stdout (aligned tables for people, JSON with
// --json for programs); progress bars and status notes go to stderr so that stdout stays
// parseable, and bars appear only when stderr is a terminal.
import cliProgress from 'cli-progress';

/** Columns separated by two spaces, each as wide as its widest cell; "(none)" for no rows. */
export function formatTable(headers: string[], rows: string[][]): string {
  if (rows.length === 0) {
    return '(none)\n';
  }
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** "key  value" lines with the keys padded to one width. */
export function formatFields(fields: [string, string][]): string {
  const width = Math.max(0, ...fields.map(([k]) => k.length));
  return fields.map(([k, v]) => `${k.padEnd(width)}  ${v}`.trimEnd()).join('\n') + '\n';
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${BYTE_UNITS[unit]}`;
}

/** Parameter counts the way model cards write them: 1.1B, 15.2M, 640K. */
export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

/** Age of a past instant ("3s ago"). */
export function formatAge(thenMs: number, nowMs: number): string {
  const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export function printText(text: string): void {
  process.stdout.write(text);
}

/** A status note for people; stderr, so it never mixes with --json output. */
export function note(text: string): void {
  process.stderr.write(text + '\n');
}

export interface Progress {
  update(done: number, total: number): void;
  /** Ends the bar; call once, also on failure. */
  stop(): void;
}

const silentProgress: Progress = { update: () => undefined, stop: () => undefined };

/** A progress bar on stderr when it is a terminal, else nothing. `unit` chooses number format. */
export function startProgress(label: string, unit: 'bytes' | 'count'): Progress {
  if (!process.stderr.isTTY) {
    return silentProgress;
  }
  const bar = new cliProgress.SingleBar(
    {
      format: `${label.padEnd(12)} {bar} {percentage}% | {value}/{total} | ETA {eta_formatted}`,
      stream: process.stderr,
      hideCursor: true,
      clearOnComplete: false,
      formatValue: (v, _options, type) =>
        unit === 'bytes' && (type === 'value' || type === 'total') ? formatBytes(v) : String(v),
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total) {
      if (!started) {
        bar.start(total, done);
        started = true;
      } else {
        bar.setTotal(total);
        bar.update(done);
      }
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
