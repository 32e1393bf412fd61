// The CLI's side of the gateway's admin HTTP API (and /health). Turns transport failures and
// OpenAI-shaped error bodies into CliErrors whose one line tells the operator what to do.
import type { WorkerView } from '../cluster/worker-view.js';
import type { ApiKeyRecord, ModelFileRecord, ModelRecord } from '../registry/registry.js';
import { CliError } from './errors.js';

export type { ApiKeyRecord, ModelFileRecord, ModelRecord, WorkerView };

export interface RegisterModelRequest {
  name: string;
  source: string;
  /** null: the gateway hashes the files itself. */
  files: ModelFileRecord[] | null;
  ttftSloMs: number | null;
  /** Idle ms on a device before a swap-out; null: the gateway's default. */
  gpuKeepAliveMs: number | null;
  /** Idle ms in host memory before the unload; null: the gateway's default. */
  hostKeepAliveMs: number | null;
}

export interface CreatedKey {
  name: string;
  key: string;
}

/** Registration hashes nothing when files are given, but inspecting a remote source takes time. */
const SLOW_REQUEST_TIMEOUT_MS = 30 * 60_000;
const REQUEST_TIMEOUT_MS = 30_000;

export class AdminClient {
  constructor(
    readonly gatewayUrl: string,
    private readonly adminToken: string | null,
  ) {}

  async health(): Promise<unknown> {
    return this.call('GET', '/health', null, REQUEST_TIMEOUT_MS);
  }

  async listModels(): Promise<ModelRecord[]> {
    return dataOf<ModelRecord>(await this.call('GET', '/admin/models', null, REQUEST_TIMEOUT_MS));
  }

  async registerModel(req: RegisterModelRequest): Promise<ModelRecord> {
    const body = await this.call('POST', '/admin/models', req, SLOW_REQUEST_TIMEOUT_MS);
    return field<ModelRecord>(body, 'model');
  }

  async deleteModel(name: string): Promise<void> {
    // Model names may contain '/' (org/model); the route takes the rest of the path.
    await this.call('DELETE', `/admin/models/${name.split('/').map(encodeURIComponent).join('/')}`, null, REQUEST_TIMEOUT_MS);
  }

  async listWorkers(): Promise<WorkerView[]> {
    return dataOf<WorkerView>(await this.call('GET', '/admin/workers', null, REQUEST_TIMEOUT_MS));
  }

  async createKey(name: string): Promise<CreatedKey> {
    const body = await this.call('POST', '/admin/keys', { name }, REQUEST_TIMEOUT_MS);
    if (!isObject(body) || typeof body.key !== 'string' || typeof body.name !== 'string') {
      throw new CliError(`unexpected answer from the gateway at ${this.gatewayUrl}/admin/keys`);
    }
    return { name: body.name, key: body.key };
  }

  async listKeys(): Promise<ApiKeyRecord[]> {
    return dataOf<ApiKeyRecord>(await this.call('GET', '/admin/keys', null, REQUEST_TIMEOUT_MS));
  }

  async deleteKey(name: string): Promise<void> {
    await this.call('DELETE', `/admin/keys/${encodeURIComponent(name)}`, null, REQUEST_TIMEOUT_MS);
  }

  private async call(method: 'GET' | 'POST' | 'DELETE', path: string, body: unknown, timeoutMs: number): Promise<unknown> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== null) headers['content-type'] = 'application/json';
    if (this.adminToken !== null) headers.authorization = `Bearer ${this.adminToken}`;
    const { request } = await import('undici');
    let status: number;
    let text: string;
    try {
      const res = await request(this.gatewayUrl + path, {
        method,
        headers,
        body: body === null ? null : JSON.stringify(body),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
      status = res.statusCode;
      text = await res.body.text();
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
        throw new CliError(`the gateway at ${this.gatewayUrl} did not answer ${method} ${path} in time`);
      }
      throw new CliError(`cannot reach the gateway at ${this.gatewayUrl} (is \`paraserve up\` running?)`);
    }
    const parsed = parseJson(text);
    if (status >= 400) {
      throw new CliError(httpErrorLine(status, parsed, text));
    }
    return parsed;
  }
}

/** The OpenAI error message of an error response, with hints for auth failures. */
export function httpErrorLine(status: number, body: unknown, raw: string): string {
  let message = raw.trim().split('\n')[0] ?? '';
  if (isObject(body) && isObject(body.error) && typeof body.error.message === 'string') {
    message = body.error.message;
  }
  if (message === '') message = 'no message';
  const hint = status === 401 || status === 403 ? ' (pass --admin-token or set PARASERVE_ADMIN_TOKEN)' : '';
  return `${message} (HTTP ${status})${hint}`;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return null;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function dataOf<T>(body: unknown): T[] {
  if (!isObject(body) || !Array.isArray(body.data)) {
    throw new CliError('unexpected answer from the gateway: no "data" list');
  }
  return body.data as T[];
}

function field<T>(body: unknown, name: string): T {
  if (!isObject(body) || !isObject(body[name])) {
    throw new CliError(`unexpected answer from the gateway: no "${name}"`);
  }
  return body[name] as T;
}
