// Reads safetensors headers — the only part of a checkpoint the planner needs: which tensors
// exist, their dtype and shape, and at which absolute byte range of which file each one
// sits, so that workers fetch exactly the ranges of their stage. The checks are those of
// the reference implementation (huggingface/safetensors), with messages that name the file
// and the tensor. Sharded checkpoints are read header by header with ranged reads; the
// weights themselves are never read here.
import type { DType } from '../native/addon-types.js';
import { ModelFormatError } from './errors.js';
import { isSafeRelativePath, type ModelSourceReader } from './source.js';

/** One tensor of a checkpoint; begin/end are absolute byte offsets in `file`, [begin, end). */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  file: string;
  begin: number;
  end: number;
}

export const SINGLE_CHECKPOINT_FILE = 'model.safetensors';
export const CHECKPOINT_INDEX_FILE = 'model.safetensors.index.json';
/** The reference implementation refuses headers above this size. */
export const MAX_HEADER_BYTES = 100_000_000;

const SUPPORTED_DTYPES: ReadonlyMap<string, DType> = new Map([
  ['F32', 'f32'],
  ['F16', 'f16'],
  ['BF16', 'bf16'],
]);

/** Every dtype the safetensors format defines; those not in SUPPORTED_DTYPES are refused as unsupported. */
const KNOWN_DTYPES: ReadonlySet<string> = new Set([
  'BOOL', 'F4', 'F6_E2M3', 'F6_E3M2', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'F8_E8M0', 'E8M0',
  'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'C64', 'F64', 'I64', 'U64',
]);

export const DTYPE_BYTES: Readonly<Record<DType, number>> = { f32: 4, f16: 2, bf16: 2 };

export const SAFETENSORS_DTYPE_NAMES: Readonly<Record<DType, string>> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };

function fail(file: string, message: string, code: 'invalid' | 'unsupported' = 'invalid'): never {
  throw new ModelFormatError(`${file}: ${message}`, file, code);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNonNegativeInt(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/**
 * Validates the 8-byte little-endian prefix against the file's size and returns the JSON
 * header's length N (the data starts at 8 + N).
 */
export function headerLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8 || prefix.length < 8) {
    fail(file, `file is ${fileSize} bytes, too small for a safetensors header (truncated?)`);
  }
  const view = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const n = view.getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    fail(file, `header size ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt file?)`);
  }
  const length = Number(n);
  if (length + 8 > fileSize) {
    fail(file, `header size ${length} runs past the end of the file (${fileSize} bytes; truncated?)`);
  }
  return length;
}

function parseMetadata(value: unknown, file: string): void {
  if (!isRecord(value)) fail(file, '__metadata__ must be an object of strings');
  for (const [key, v] of Object.entries(value)) {
    if (typeof v !== 'string') fail(file, `__metadata__ value for "${key}" must be a string`);
  }
}

interface RawEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

function parseEntry(name: string, value: unknown, file: string): RawEntry {
  if (!isRecord(value)) fail(file, `tensor "${name}": entry must be an object`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (typeof dtype !== 'string' || !KNOWN_DTYPES.has(dtype)) {
    fail(file, `tensor "${name}": invalid dtype ${JSON.stringify(dtype)}`);
  }
  const ours = SUPPORTED_DTYPES.get(dtype);
  if (ours === undefined) fail(file, `unsupported dtype ${dtype} for tensor ${name}`, 'unsupported');
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInt)) {
    fail(file, `tensor "${name}": shape must be an array of non-negative integers (got ${JSON.stringify(shape)})`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInt)) {
    fail(file, `tensor "${name}": data_offsets must be [begin, end] (got ${JSON.stringify(offsets)})`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) fail(file, `tensor "${name}": data_offsets [${begin}, ${end}] end before they begin`);
  let elements = 1;
  for (const dim of shape as number[]) {
    elements *= dim;
    if (!Number.isSafeInteger(elements)) fail(file, `tensor "${name}": shape ${JSON.stringify(shape)} is too large`);
  }
  const bytes = elements * DTYPE_BYTES[ours];
  if (end - begin !== bytes) {
    fail(
      file,
      `tensor "${name}": data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} ${JSON.stringify(shape)} needs ${bytes}`,
    );
  }
  return { name, dtype: ours, shape: [...(shape as number[])], begin, end };
}

/**
 * Parses a safetensors header. `headerBytes` holds at least the first 8 + N bytes of the
 * file (the length prefix and the JSON header; more, e.g. the whole file, is fine);
 * `fileSize` is the size of the whole file. Returns the tensors in file order with
 * absolute offsets. Throws ModelFormatError naming `file` and the tensor at fault.
 */
export function parseSafetensorsHeader(headerBytes: Uint8Array, fileSize: number, file: string): TensorInfo[] {
  const n = headerLength(headerBytes, fileSize, file);
  if (headerBytes.length < 8 + n) fail(file, `only ${headerBytes.length} of the ${8 + n} header bytes were given`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes.subarray(8, 8 + n));
  } catch {
    fail(file, 'header is not valid UTF-8');
  }
  if (!text.startsWith('{')) fail(file, 'header is not a JSON object (does not start with "{")');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(file, `header is not valid JSON: ${(e as Error).message}`);
  }
  if (!isRecord(json)) fail(file, 'header is not a JSON object');

  const entries: RawEntry[] = [];
  for (const [name, value] of Object.entries(json)) {
    if (name === '__metadata__') parseMetadata(value, file);
    else entries.push(parseEntry(name, value, file));
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);

  const dataBytes = fileSize - 8 - n;
  let expected = 0;
  let previous: RawEntry | null = null;
  for (const entry of entries) {
    if (entry.begin < expected) {
      fail(file, `tensor "${entry.name}" (data_offsets [${entry.begin}, ${entry.end}]) overlaps tensor "${previous?.name}"`);
    }
    if (entry.begin > expected) {
      fail(file, `gap of ${entry.begin - expected} bytes before tensor "${entry.name}" (data_offsets must be contiguous)`);
    }
    expected = entry.end;
    previous = entry;
  }
  if (expected > dataBytes) {
    fail(
      file,
      `tensor "${previous?.name}" ends at data byte ${expected} but the file holds only ${dataBytes} data bytes (truncated file?)`,
    );
  }
  if (expected < dataBytes) fail(file, `${dataBytes - expected} trailing bytes after the last tensor`);

  const base = 8 + n;
  return entries.map((e) => ({ name: e.name, dtype: e.dtype, shape: e.shape, file, begin: base + e.begin, end: base + e.end }));
}

/** One tensor of a layout a gateway sends with a load (proto CheckpointTensor): dtype by its safetensors name. */
export interface TensorLayoutEntry {
  name: string;
  dtype: string;
  shape: number[];
  file: string;
  begin: number;
  end: number;
}

/** Pure: tensors as a layout entry carries them. */
export function layoutOf(tensors: readonly TensorInfo[]): TensorLayoutEntry[] {
  return tensors.map((t) => ({ name: t.name, dtype: SAFETENSORS_DTYPE_NAMES[t.dtype], shape: [...t.shape], file: t.file, begin: t.begin, end: t.end }));
}

/**
 * Pure: the tensors of a layout a gateway read from the checkpoint's headers and sent with a
 * load, checked as a header's own entries are (known dtype, shape against byte count) and
 * against the source's files: each lies inside one of them, no name twice. ModelFormatError
 * naming the tensor otherwise.
 */
export function tensorsFromLayout(entries: readonly TensorLayoutEntry[], files: readonly { path: string; size: number }[]): Map<string, TensorInfo> {
  const sizes = new Map(files.map((f) => [f.path, f.size]));
  const tensors = new Map<string, TensorInfo>();
  for (const entry of entries) {
    const size = sizes.get(entry.file);
    if (size === undefined) throw new ModelFormatError(`tensor "${entry.name}" lies in ${JSON.stringify(entry.file)}, not a file of the source`, null);
    const raw = parseEntry(entry.name, { dtype: entry.dtype, shape: entry.shape, data_offsets: [entry.begin, entry.end] }, entry.file);
    if (raw.end > size) fail(entry.file, `tensor "${entry.name}" ends at byte ${raw.end}, past the file's ${size} bytes`);
    if (tensors.has(entry.name)) fail(entry.file, `tensor "${entry.name}" is listed twice`);
    tensors.set(entry.name, { ...raw, file: entry.file });
  }
  return tensors;
}

/** Reads one file's header with two ranged reads: the 8-byte prefix, then the JSON. */
async function readShardHeader(source: ModelSourceReader, file: string): Promise<TensorInfo[]> {
  const size = await source.size(file);
  if (size < 8) fail(file, `file is ${size} bytes, too small for a safetensors header (truncated?)`);
  const prefix = await source.readRange(file, 0, 8);
  const n = headerLength(prefix, size, file);
  const header = new Uint8Array(8 + n);
  header.set(prefix, 0);
  header.set(await source.readRange(file, 8, 8 + n), 8);
  return parseSafetensorsHeader(header, size, file);
}

/** Pure: the weight_map of a model.safetensors.index.json, validated. */
export function parseCheckpointIndex(text: string): Map<string, string> {
  const file = CHECKPOINT_INDEX_FILE;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(file, `not valid JSON: ${(e as Error).message}`);
  }
  if (!isRecord(json) || !isRecord(json.weight_map)) fail(file, 'missing "weight_map" object');
  const map = new Map<string, string>();
  for (const [name, shard] of Object.entries(json.weight_map)) {
    if (typeof shard !== 'string' || !isSafeRelativePath(shard)) {
      fail(file, `weight_map entry for "${name}" must be a relative file name (got ${JSON.stringify(shard)})`);
    }
    map.set(name, shard);
  }
  if (map.size === 0) fail(file, 'weight_map is empty');
  return map;
}

/** Pure: checks shard headers against the index and merges them into one map. */
export function mergeShards(weightMap: Map<string, string>, shards: Map<string, TensorInfo[]>): Map<string, TensorInfo> {
  const tensors = new Map<string, TensorInfo>();
  for (const [shard, infos] of shards) {
    for (const info of infos) {
      const other = tensors.get(info.name);
      if (other !== undefined) fail(shard, `tensor "${info.name}" appears in both ${other.file} and ${shard}`);
      const mapped = weightMap.get(info.name);
      if (mapped === undefined) fail(shard, `tensor "${info.name}" is not listed in ${CHECKPOINT_INDEX_FILE}`);
      if (mapped !== shard) fail(shard, `tensor "${info.name}" is in ${shard} but ${CHECKPOINT_INDEX_FILE} maps it to ${mapped}`);
      tensors.set(info.name, info);
    }
  }
  for (const [name, shard] of weightMap) {
    if (!tensors.has(name)) fail(shard, `${CHECKPOINT_INDEX_FILE} maps tensor "${name}" to ${shard} but ${shard} has no such tensor`);
  }
  return tensors;
}

async function exists(source: ModelSourceReader, path: string): Promise<boolean> {
  try {
    await source.size(path);
    return true;
  } catch (e) {
    if (e instanceof ModelFormatError && e.code === 'missing_file') return false;
    throw e;
  }
}

/**
 * Reads the headers of a checkpoint: model.safetensors.index.json and its shards when the
 * index exists, else model.safetensors. Never reads tensor data.
 */
export async function readCheckpointTensors(source: ModelSourceReader): Promise<Map<string, TensorInfo>> {
  if (!(await exists(source, CHECKPOINT_INDEX_FILE))) {
    const infos = await readShardHeader(source, SINGLE_CHECKPOINT_FILE);
    return new Map(infos.map((info) => [info.name, info]));
  }
  const indexText = new TextDecoder().decode(await source.readFile(CHECKPOINT_INDEX_FILE));
  const weightMap = parseCheckpointIndex(indexText);
  const shardNames = [...new Set(weightMap.values())];
  const headers = await Promise.all(shardNames.map((shard) => readShardHeader(source, shard)));
  return mergeShards(weightMap, new Map(shardNames.map((shard, i) => [shard, headers[i] ?? []])));
}
