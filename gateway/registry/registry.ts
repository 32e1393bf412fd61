// What the operator registered and what outlives a gateway restart: models (with everything
// serving needs — config, tokenizer, chat template — so no source is re-fetched) and API keys
// (as sha256 digests only). Synchronous on purpose: better-sqlite3 answers a primary-key
// lookup in microseconds, faster than any async round trip. Chunk hashes (thousands per large
// model) live in their own column and are parsed once per model, not on every lookup.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type Database from 'better-sqlite3';
import { openRegistryDatabase } from './database.js';

export interface ModelFileRecord {
  path: string;
  size: number;
  sha256: string;
  /** Size of the hashed pieces of the file; 0 when none were recorded (registered before chunks). */
  chunkBytes: number;
  /** sha256 (hex) of each chunkBytes piece, in file order; empty when chunkBytes is 0. */
  chunkSha256: string[];
}

/** file_chunks_json: chunk hashes by file path. */
type FileChunks = Record<string, { chunkBytes: number; chunkSha256: string[] }>;

/** A registered model as the admin API and CLI show it. */
export interface ModelRecord {
  name: string;
  source: string;
  architecture: string;
  parameters: number;
  bytes: number;
  layers: number;
  /** The model's own context window (max_position_embeddings). */
  contextLength: number;
  ttftSloMs: number | null;
  /** Idle time on a device before the instance is swapped out, ms; null: the gateway's default. */
  gpuKeepAliveMs: number | null;
  /** Idle time in host memory (after the swap-out) before the instance is unloaded, ms; null: the gateway's default. */
  hostKeepAliveMs: number | null;
  /** ISO 8601. */
  createdAt: string;
  files: ModelFileRecord[];
}

/** What serving needs beyond ModelRecord, kept apart from it because the texts are large. */
export interface ModelArtifacts {
  configJson: string;
  tokenizerJson: string;
  tokenizerConfigJson: string;
  /** End-of-sequence ids of config.json and generation_config.json (the tokenizer may add its own). */
  eosTokenIds: number[];
}

/** What registration stores: the record as shown (its creation time is the registry's) and the artifacts. */
export type NewModel = Omit<ModelRecord, 'createdAt'> & ModelArtifacts;

export interface ApiKeyRecord {
  name: string;
  createdAt: string;
}

/** add* found the name taken. */
export class RegistryConflictError extends Error {
  override readonly name = 'RegistryConflictError';
}

interface ModelRow {
  name: string;
  source: string;
  files_json: string;
  architecture: string;
  parameters: number;
  bytes: number;
  layers: number;
  context_length: number;
  ttft_slo_ms: number | null;
  gpu_keep_alive_ms: number | null;
  host_keep_alive_ms: number | null;
  created_at: string;
}

/** Columns of ModelRow; file_chunks_json is read separately (see chunksOf). */
const MODEL_COLUMNS =
  'name, source, files_json, architecture, parameters, bytes, layers, context_length, ttft_slo_ms, gpu_keep_alive_ms, host_keep_alive_ms, created_at';

export function sha256Digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

function isUniqueViolation(e: unknown): boolean {
  return e instanceof Error && 'code' in e && String(e.code).startsWith('SQLITE_CONSTRAINT');
}

function toRecord(row: ModelRow, chunks: FileChunks): ModelRecord {
  const files = JSON.parse(row.files_json) as { path: string; size: number; sha256: string }[];
  return {
    name: row.name,
    source: row.source,
    architecture: row.architecture,
    parameters: row.parameters,
    bytes: row.bytes,
    layers: row.layers,
    contextLength: row.context_length,
    ttftSloMs: row.ttft_slo_ms,
    gpuKeepAliveMs: row.gpu_keep_alive_ms,
    hostKeepAliveMs: row.host_keep_alive_ms,
    createdAt: row.created_at,
    files: files.map((f) => ({
      path: f.path,
      size: f.size,
      sha256: f.sha256,
      chunkBytes: chunks[f.path]?.chunkBytes ?? 0,
      chunkSha256: chunks[f.path]?.chunkSha256 ?? [],
    })),
  };
}

export class Registry {
  /** Digests of the stored keys, cached: auth reads them on every request. */
  private keyDigests: Buffer[];
  /** Parsed file_chunks_json by model name, valid while created_at matches. */
  private readonly chunkCache = new Map<string, { createdAt: string; chunks: FileChunks }>();

  private constructor(private readonly db: Database.Database) {
    this.keyDigests = this.loadKeyDigests();
  }

  /** Opens `<dataDir>/registry.sqlite` (or any path; ':memory:' for tests). */
  static open(file: string): Registry {
    return new Registry(openRegistryDatabase(file));
  }

  addModel(m: NewModel): ModelRecord {
    const createdAt = new Date().toISOString();
    try {
      this.db
        .prepare(
          `INSERT INTO models (name, source, files_json, file_chunks_json, config_json, tokenizer_json, tokenizer_config_json,
             eos_token_ids_json, architecture, parameters, layers, context_length, ttft_slo_ms, gpu_keep_alive_ms,
             host_keep_alive_ms, bytes, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          m.name,
          m.source,
          JSON.stringify(m.files.map((f) => ({ path: f.path, size: f.size, sha256: f.sha256 }))),
          JSON.stringify(
            Object.fromEntries(
              m.files
                .filter((f) => f.chunkBytes > 0)
                .map((f) => [f.path, { chunkBytes: f.chunkBytes, chunkSha256: f.chunkSha256 }]),
            ),
          ),
          m.configJson,
          m.tokenizerJson,
          m.tokenizerConfigJson,
          JSON.stringify(m.eosTokenIds),
          m.architecture,
          m.parameters,
          m.layers,
          m.contextLength,
          m.ttftSloMs,
          m.gpuKeepAliveMs,
          m.hostKeepAliveMs,
          m.bytes,
          createdAt,
        );
    } catch (e) {
      if (isUniqueViolation(e)) throw new RegistryConflictError(`model '${m.name}' is already registered`);
      throw e;
    }
    const record = this.getModel(m.name);
    if (!record) throw new Error(`model '${m.name}' vanished right after insert`);
    return record;
  }

  getModel(name: string): ModelRecord | null {
    const row = this.db.prepare(`SELECT ${MODEL_COLUMNS} FROM models WHERE name = ?`).get(name) as
      | ModelRow
      | undefined;
    return row ? toRecord(row, this.chunksOf(row)) : null;
  }

  getModelArtifacts(name: string): ModelArtifacts | null {
    const row = this.db
      .prepare('SELECT config_json, tokenizer_json, tokenizer_config_json, eos_token_ids_json FROM models WHERE name = ?')
      .get(name) as
      | { config_json: string; tokenizer_json: string; tokenizer_config_json: string; eos_token_ids_json: string }
      | undefined;
    if (!row) return null;
    return {
      configJson: row.config_json,
      tokenizerJson: row.tokenizer_json,
      tokenizerConfigJson: row.tokenizer_config_json,
      eosTokenIds: JSON.parse(row.eos_token_ids_json) as number[],
    };
  }

  listModels(): ModelRecord[] {
    const rows = this.db.prepare(`SELECT ${MODEL_COLUMNS} FROM models ORDER BY name`).all() as ModelRow[];
    return rows.map((row) => toRecord(row, this.chunksOf(row)));
  }

  deleteModel(name: string): boolean {
    this.chunkCache.delete(name);
    return this.db.prepare('DELETE FROM models WHERE name = ?').run(name).changes > 0;
  }

  /** Creates a key and returns it; only its digest is stored, so this is the one time it is seen. */
  createApiKey(name: string): ApiKeyRecord & { key: string } {
    const key = `psk-${randomBytes(32).toString('base64url')}`;
    const createdAt = new Date().toISOString();
    try {
      this.db
        .prepare('INSERT INTO api_keys (name, key_sha256, created_at) VALUES (?, ?, ?)')
        .run(name, sha256Digest(key).toString('hex'), createdAt);
    } catch (e) {
      if (isUniqueViolation(e)) throw new RegistryConflictError(`API key '${name}' already exists`);
      throw e;
    }
    this.keyDigests = this.loadKeyDigests();
    return { name, key, createdAt };
  }

  listApiKeys(): ApiKeyRecord[] {
    const rows = this.db.prepare('SELECT name, created_at FROM api_keys ORDER BY name').all() as {
      name: string;
      created_at: string;
    }[];
    return rows.map((r) => ({ name: r.name, createdAt: r.created_at }));
  }

  deleteApiKey(name: string): boolean {
    const deleted = this.db.prepare('DELETE FROM api_keys WHERE name = ?').run(name).changes > 0;
    this.keyDigests = this.loadKeyDigests();
    return deleted;
  }

  hasApiKeys(): boolean {
    return this.keyDigests.length > 0;
  }

  /** Constant-time per stored key: every digest is compared, whichever matches. */
  matchesApiKey(presentedDigest: Buffer): boolean {
    let found = false;
    for (const d of this.keyDigests) {
      if (timingSafeEqual(d, presentedDigest)) found = true;
    }
    return found;
  }

  close(): void {
    this.db.close();
  }

  /** Chunk hashes of a model's files; NULL (registered before schema 2) reads as none. */
  private chunksOf(row: ModelRow): FileChunks {
    const cached = this.chunkCache.get(row.name);
    if (cached && cached.createdAt === row.created_at) return cached.chunks;
    const stored = this.db.prepare('SELECT file_chunks_json FROM models WHERE name = ?').get(row.name) as
      | { file_chunks_json: string | null }
      | undefined;
    const chunks = stored?.file_chunks_json ? (JSON.parse(stored.file_chunks_json) as FileChunks) : {};
    this.chunkCache.set(row.name, { createdAt: row.created_at, chunks });
    return chunks;
  }

  private loadKeyDigests(): Buffer[] {
    const rows = this.db.prepare('SELECT key_sha256 FROM api_keys').all() as { key_sha256: string }[];
    return rows.map((r) => Buffer.from(r.key_sha256, 'hex'));
  }
}
