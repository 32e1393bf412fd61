// Registration-time validation of a model directory: everything a worker will later rely on
// is checked once, up front, so a bad model is refused with a message that names the file and
// the problem instead of failing a cold start. Reads only the small files and the safetensors
// headers; hashModelFiles is the one pass over all bytes, recording what later fetches are
// verified against: each file's sha256 and the sha256 of each fixed-size chunk of it, so a
// worker fetching only a stage's byte ranges verifies whole chunks without the whole file.
import { createHash } from 'node:crypto';
import { parseModelConfig, tokenIds } from './config.js';
import { ModelFormatError } from './errors.js';
import type { ModelConfig } from './model-config.js';
import { CHECKPOINT_INDEX_FILE, readCheckpointTensors, SINGLE_CHECKPOINT_FILE, type TensorInfo } from './safetensors.js';
import type { ModelSourceReader } from './source.js';
import { expectedTensorNames, LM_HEAD } from './stage-plan.js';
import { ModelTokenizer, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE } from './tokenizer.js';

export const CONFIG_FILE = 'config.json';
export const GENERATION_CONFIG_FILE = 'generation_config.json';

/** What registration learns about a model; every field is validated. */
export interface ModelInspection {
  /** From config.json, with generation_config.json's eos ids added to eosTokenIds. */
  config: ModelConfig;
  configJson: string;
  tokenizerJson: string;
  tokenizerConfigJson: string;
  /** Every file the model consists of (config, tokenizer, generation config, index, shards), with sizes. */
  files: { path: string; size: number }[];
  /** Every checkpoint tensor, keyed by name, with absolute offsets in its file. */
  tensors: Map<string, TensorInfo>;
  /** Sum of the sizes of `files`. */
  totalBytes: number;
}

/** Chunk size hashModelFiles uses unless told otherwise; recorded per file, so it can change. */
export const DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024;

export interface HashedFile {
  path: string;
  size: number;
  sha256: string;
  /** The file cut into pieces of this many bytes (the last may be shorter). */
  chunkBytes: number;
  /** sha256 (hex) of each piece, in file order; ceil(size / chunkBytes) entries. */
  chunkSha256: string[];
}

/** Pure: how many chunks of chunkBytes a file of `size` bytes has (0 for an empty file). */
export function chunkCount(size: number, chunkBytes: number): number {
  return Math.ceil(size / chunkBytes);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseJsonFile(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(`${file}: not valid JSON: ${(e as Error).message}`, file, 'invalid');
  }
}

function decodeUtf8(bytes: Uint8Array, file: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ModelFormatError(`${file}: not valid UTF-8`, file, 'invalid');
  }
}

async function readText(source: ModelSourceReader, file: string): Promise<string> {
  return decodeUtf8(await source.readFile(file), file);
}

async function readOptionalText(source: ModelSourceReader, file: string): Promise<string | null> {
  try {
    return await readText(source, file);
  } catch (e) {
    if (e instanceof ModelFormatError && e.code === 'missing_file') return null;
    throw e;
  }
}

/** Tensors that some checkpoints carry but no model computes with. */
function isIgnorableTensor(name: string, info: TensorInfo, config: ModelConfig): boolean {
  if (name.endsWith('.rotary_emb.inv_freq')) return true;
  // A tied model that still ships lm_head.weight: the embeddings are used instead.
  return config.tieWordEmbeddings && name === LM_HEAD && sameShape(info.shape, [config.vocabSize, config.hiddenSize]);
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * Pure: checks that the checkpoint holds exactly the tensors config.json implies, with their
 * shapes. `checkpointFile` names the file that lists the tensors (for missing ones).
 */
export function checkTensorsAgainstConfig(tensors: Map<string, TensorInfo>, config: ModelConfig, checkpointFile: string): void {
  const expected = expectedTensorNames(config);
  for (const [name, shape] of expected) {
    const info = tensors.get(name);
    if (info === undefined) {
      throw new ModelFormatError(
        `${checkpointFile}: missing tensor ${name} (config.json implies shape ${JSON.stringify(shape)})`,
        checkpointFile,
        'invalid',
      );
    }
    if (!sameShape(info.shape, shape)) {
      throw new ModelFormatError(
        `${info.file}: tensor ${name} has shape ${JSON.stringify(info.shape)} but config.json implies ${JSON.stringify(shape)}`,
        info.file,
        'invalid',
      );
    }
  }
  for (const [name, info] of tensors) {
    if (!expected.has(name) && !isIgnorableTensor(name, info, config)) {
      throw new ModelFormatError(
        `${info.file}: unexpected tensor ${name} (config.json describes a ${config.architecture} model with ${config.numLayers} layers)`,
        info.file,
        'invalid',
      );
    }
  }
}

/** Extra eos ids from generation_config.json. */
function generationEosIds(text: string, vocabSize: number): number[] {
  const json = parseJsonFile(text, GENERATION_CONFIG_FILE);
  if (!isRecord(json)) throw new ModelFormatError(`${GENERATION_CONFIG_FILE}: must be a JSON object`, GENERATION_CONFIG_FILE);
  const ids = tokenIds(json.eos_token_id, 'eos_token_id', GENERATION_CONFIG_FILE);
  for (const id of ids) {
    if (id >= vocabSize) throw new ModelFormatError(`${GENERATION_CONFIG_FILE}: eos_token_id ${id} is not below vocab_size ${vocabSize}`, GENERATION_CONFIG_FILE);
  }
  return ids;
}

/**
 * Reads and validates a model directory: config.json (supported architecture, consistent
 * numbers), tokenizer.json and tokenizer_config.json (loadable, chat template parses, no ids
 * beyond vocab_size), generation_config.json when present, and the safetensors headers
 * (single or sharded) against the tensors the config implies. Throws ModelFormatError.
 */
export async function inspectModel(source: ModelSourceReader): Promise<ModelInspection> {
  const configJson = await readText(source, CONFIG_FILE);
  const parsed = parseModelConfig(parseJsonFile(configJson, CONFIG_FILE));

  const tokenizerJson = await readText(source, TOKENIZER_FILE);
  const tokenizerConfigJson = await readText(source, TOKENIZER_CONFIG_FILE);
  const tokenizer = ModelTokenizer.fromJson(tokenizerJson, tokenizerConfigJson);
  if (tokenizer.vocabSize > parsed.vocabSize) {
    throw new ModelFormatError(
      `${TOKENIZER_FILE}: has token ids up to ${tokenizer.vocabSize - 1} but config.json vocab_size is ${parsed.vocabSize}`,
      TOKENIZER_FILE,
    );
  }

  const generationJson = await readOptionalText(source, GENERATION_CONFIG_FILE);
  const extraEos = generationJson === null ? [] : generationEosIds(generationJson, parsed.vocabSize);
  const config: ModelConfig = { ...parsed, eosTokenIds: [...new Set([...parsed.eosTokenIds, ...extraEos])] };

  const tensors = await readCheckpointTensors(source);
  const weightFiles = [...new Set([...tensors.values()].map((t) => t.file))];
  const sharded = !(weightFiles.length === 1 && weightFiles[0] === SINGLE_CHECKPOINT_FILE);
  checkTensorsAgainstConfig(tensors, config, sharded ? CHECKPOINT_INDEX_FILE : SINGLE_CHECKPOINT_FILE);

  const encoder = new TextEncoder();
  const files: { path: string; size: number }[] = [
    { path: CONFIG_FILE, size: encoder.encode(configJson).length },
    { path: TOKENIZER_FILE, size: encoder.encode(tokenizerJson).length },
    { path: TOKENIZER_CONFIG_FILE, size: encoder.encode(tokenizerConfigJson).length },
  ];
  if (generationJson !== null) files.push({ path: GENERATION_CONFIG_FILE, size: encoder.encode(generationJson).length });
  const checkpointFiles = sharded ? [CHECKPOINT_INDEX_FILE, ...weightFiles] : weightFiles;
  for (const path of checkpointFiles) files.push({ path, size: await source.size(path) });

  return {
    config,
    configJson,
    tokenizerJson,
    tokenizerConfigJson,
    files,
    tensors,
    totalBytes: files.reduce((sum, f) => sum + f.size, 0),
  };
}

/**
 * sha256 of each file and of each chunkBytes piece of it, in one streamed pass (never a whole
 * file in memory). Checks each file still has the recorded size. onProgress gets bytes hashed
 * so far over all files and their total.
 */
export async function hashModelFiles(
  source: ModelSourceReader,
  files: { path: string; size: number }[],
  onProgress: ((done: number, total: number) => void) | null,
  chunkBytes: number = DEFAULT_CHUNK_BYTES,
): Promise<HashedFile[]> {
  if (!Number.isInteger(chunkBytes) || chunkBytes <= 0) throw new RangeError(`chunkBytes must be a positive integer, got ${chunkBytes}`);
  const total = files.reduce((sum, f) => sum + f.size, 0);
  let done = 0;
  const out: HashedFile[] = [];
  for (const { path, size } of files) {
    const actual = await source.size(path);
    if (actual !== size) {
      throw new ModelFormatError(`${path} at ${source.uri} is ${actual} bytes, expected ${size}`, path, 'invalid');
    }
    const whole = createHash('sha256');
    const chunkSha256: string[] = [];
    let piece = createHash('sha256');
    let pieceFill = 0;
    await source.streamRange(
      path,
      0,
      size,
      (chunk) => {
        whole.update(chunk);
        for (let at = 0; at < chunk.length; ) {
          const take = Math.min(chunk.length - at, chunkBytes - pieceFill);
          piece.update(chunk.subarray(at, at + take));
          pieceFill += take;
          at += take;
          if (pieceFill === chunkBytes) {
            chunkSha256.push(piece.digest('hex'));
            piece = createHash('sha256');
            pieceFill = 0;
          }
        }
        done += chunk.length;
        onProgress?.(done, total);
      },
      null,
    );
    if (pieceFill > 0) chunkSha256.push(piece.digest('hex'));
    if (chunkSha256.length !== chunkCount(size, chunkBytes)) {
      throw new ModelFormatError(`${path} at ${source.uri} changed while it was hashed`, path, 'invalid');
    }
    out.push({ path, size, sha256: whole.digest('hex'), chunkBytes, chunkSha256 });
  }
  return out;
}
