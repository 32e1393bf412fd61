// Option parsers and the options several commands share. Every option can also come from an
// environment variable PARASERVE_<NAME> (commander's .env()), so systemd env files and CI
// configure the daemons without command lines; a flag on the command line wins over the env.
import { homedir } from 'node:os';
import { resolve } from 'node:path';
import { InvalidArgumentError, Option } from 'commander';

export const DEFAULT_GATEWAY_URL = 'http://127.0.0.1:8080';
export const DEFAULT_DATA_DIR = '~/.paraserve';

export function parseIntIn(min: number, max: number): (value: string) => number {
  return (value) => {
    if (!/^-?\d+$/.test(value.trim())) {
      throw new InvalidArgumentError(`expected an integer in [${min}, ${max}]`);
    }
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected an integer in [${min}, ${max}]`);
    }
    return n;
  };
}

export const parsePort = parseIntIn(0, 65535);

const BYTE_SUFFIXES: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  kib: 1024,
  m: 1e6,
  mb: 1e6,
  mib: 1024 ** 2,
  g: 1e9,
  gb: 1e9,
  gib: 1024 ** 3,
  t: 1e12,
  tb: 1e12,
  tib: 1024 ** 4,
};

/** "8GiB", "512MB", "1073741824" → bytes. */
export function parseBytes(value: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const scale = m === null ? undefined : BYTE_SUFFIXES[(m[2] ?? '').toLowerCase()];
  if (m === null || scale === undefined) {
    throw new InvalidArgumentError('expected a size such as 8GiB, 512MB or a number of bytes');
  }
  const bytes = Math.floor(Number(m[1]) * scale);
  if (!Number.isSafeInteger(bytes)) {
    throw new InvalidArgumentError('size too large');
  }
  return bytes;
}

/** An http(s) base URL, without a trailing slash. */
export function parseHttpUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError('expected a URL such as http://127.0.0.1:8080');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new InvalidArgumentError('expected an http:// or https:// URL');
  }
  return url.href.replace(/\/+$/, '');
}

/** Repeatable and comma-separated, so one env var can carry several values. */
export function collectList(value: string, previous: string[] | undefined): string[] {
  const items = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  return [...(previous ?? []), ...items];
}

/** Expands a leading "~" and makes the path absolute. */
export function resolvePath(path: string): string {
  if (path === '~' || path.startsWith('~/')) {
    return resolve(homedir(), path.slice(2));
  }
  return resolve(path);
}

export function dataDirOption(): Option {
  return new Option('--data-dir <dir>', 'where paraserve keeps its registry, models and logs')
    .default(DEFAULT_DATA_DIR)
    .env('PARASERVE_DATA_DIR');
}

export function logLevelOption(): Option {
  return new Option('--log-level <level>', 'pino log level')
    .choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
    .default('info')
    .env('PARASERVE_LOG_LEVEL');
}

export function jsonOption(): Option {
  return new Option('--json', 'machine-readable JSON on stdout');
}

/** --gateway and --admin-token, for the commands that talk to the admin API. */
export function adminOptions(): Option[] {
  return [
    new Option('--gateway <url>', 'gateway base URL')
      .default(DEFAULT_GATEWAY_URL)
      .env('PARASERVE_GATEWAY')
      .argParser(parseHttpUrl),
    new Option('--admin-token <token>', 'bearer token of the admin API').env('PARASERVE_ADMIN_TOKEN'),
  ];
}

export interface AdminFlags {
  gateway: string;
  adminToken?: string;
}
