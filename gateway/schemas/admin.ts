// Request bodies and params of the admin API (CONTRACTS.md, gateway section), used by the CLI
// and by workers registering themselves. Names are restricted to characters that stay
// unambiguous inside instance ids (`${model}@${workerId}#n`) and URLs.
import { Type, type Static } from '@sinclair/typebox';
import { Nullable } from './openai.js';

export const MODEL_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$';
const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$';

export const ModelFileInput = Type.Object({
  path: Type.String({ minLength: 1 }),
  size: Type.Integer({ minimum: 0 }),
  sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  /** Both or neither; without them the gateway reads the file to compute them. */
  chunkBytes: Type.Optional(Type.Integer({ minimum: 1, maximum: 0xffffffff })),
  chunkSha256: Type.Optional(Type.Array(Type.String({ pattern: '^[0-9a-f]{64}$' }))),
});
export type ModelFileInput = Static<typeof ModelFileInput>;

export const RegisterModelBody = Type.Object({
  name: Type.String({ pattern: MODEL_NAME_PATTERN }),
  source: Type.String({ minLength: 1 }),
  /** Omitted or null: the gateway hashes the files itself. */
  files: Type.Optional(Nullable(Type.Array(ModelFileInput, { minItems: 1 }))),
  ttftSloMs: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0 }))),
  /** Idle ms on a device before a swap-out; omitted or null: the gateway's default. */
  gpuKeepAliveMs: Type.Optional(Nullable(Type.Number({ minimum: 0 }))),
  /** Idle ms in host memory after the swap-out before the unload; omitted or null: the gateway's default. */
  hostKeepAliveMs: Type.Optional(Nullable(Type.Number({ minimum: 0 }))),
});
export type RegisterModelBody = Static<typeof RegisterModelBody>;

export const RegisterWorkerBody = Type.Object({
  id: Type.String({ pattern: NAME_PATTERN }),
  address: Type.String({ pattern: '^\\S+:[0-9]{1,5}$' }),
  backend: Type.String({ minLength: 1 }),
});
export type RegisterWorkerBody = Static<typeof RegisterWorkerBody>;

export const CreateKeyBody = Type.Object({ name: Type.String({ pattern: NAME_PATTERN }) });
export type CreateKeyBody = Static<typeof CreateKeyBody>;

export const NameParams = Type.Object({ name: Type.String({ minLength: 1 }) });
export type NameParams = Static<typeof NameParams>;
