// The registry's SQLite file: opened once per gateway, WAL so readers never wait on the
// writer, and versioned so a newer gateway can migrate an older file in place. Migrations
// only append: each one runs once, in order, inside one transaction with its version bump.
import Database from 'better-sqlite3';

export class RegistrySchemaError extends Error {
  override readonly name = 'RegistrySchemaError';
}

interface Migration {
  version: number;
  sql: string;
}

const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    sql: `
      CREATE TABLE models (
        name TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        files_json TEXT NOT NULL,            -- [{path,size,sha256}]
        config_json TEXT NOT NULL,           -- config.json as registered
        tokenizer_json TEXT NOT NULL,        -- tokenizer.json, so serving needs no re-fetch
        tokenizer_config_json TEXT NOT NULL, -- tokenizer_config.json (chat template)
        eos_token_ids_json TEXT NOT NULL,    -- config.json and generation_config.json eos ids
        architecture TEXT NOT NULL,
        parameters INTEGER NOT NULL,
        layers INTEGER NOT NULL,
        context_length INTEGER NOT NULL,
        ttft_slo_ms REAL,
        bytes INTEGER NOT NULL,
        created_at TEXT NOT NULL             -- ISO 8601
      );
      CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        key_sha256 TEXT NOT NULL UNIQUE,     -- hex digest; the key itself is never stored
        created_at TEXT NOT NULL
      );
    `,
  },
  {
    // Chunk hashes of each file (see worker/models/inspect.ts), kept beside files_json so a
    // model listing stays small: {"<path>": {"chunkBytes": n, "chunkSha256": [hex, ...]}}.
    // NULL for models registered before chunks were recorded; their loads verify nothing.
    version: 2,
    sql: `ALTER TABLE models ADD COLUMN file_chunks_json TEXT;`,
  },
  {
    // Keep-alive per model (issue 5): how long an idle instance stays on a device before it is
    // swapped out, and how long its host copy stays after that before it is unloaded. NULL
    // (every row registered before) takes the gateway's defaults.
    version: 3,
    sql: `
      ALTER TABLE models ADD COLUMN gpu_keep_alive_ms REAL;
      ALTER TABLE models ADD COLUMN host_keep_alive_ms REAL;
    `,
  },
];

export const REGISTRY_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/** Opens (creating when absent) and migrates the registry file; ':memory:' for throwaway use. */
export function openRegistryDatabase(file: string): Database.Database {
  const db = new Database(file);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('busy_timeout = 5000');
    migrate(db);
    return db;
  } catch (e) {
    db.close();
    throw e;
  }
}

function migrate(db: Database.Database): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
  const row = db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined;
  const current = row?.version ?? 0;
  if (current > REGISTRY_SCHEMA_VERSION) {
    throw new RegistrySchemaError(
      `registry schema version ${current} is newer than this gateway supports (${REGISTRY_SCHEMA_VERSION})`,
    );
  }
  db.transaction(() => {
    for (const m of MIGRATIONS) {
      if (m.version > current) db.exec(m.sql);
    }
    db.prepare('DELETE FROM schema_version').run();
    db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(REGISTRY_SCHEMA_VERSION);
  })();
}
