// What registering a model checks before anything is stored: the source opens, its files
// form a model paraserve can serve (config, safetensors, tokenizer — inspectModel says what is
// wrong otherwise), and the file list with digests matches what is there. When the caller
// sends no digests the gateway hashes the files itself (slow for big models: the CLI hashes
// locally with a progress bar and sends them). Digests a caller sends are trusted, as the
// operator is; but every stored file must carry chunk hashes (workers verify stage ranges
// against them), so files declared without chunks are read here, their chunks computed and
// their whole-file digest checked on the way.
import { ModelFormatError } from '../../worker/models/errors.js';
import { chunkCount, hashModelFiles, inspectModel, type ModelInspection } from '../../worker/models/inspect.js';
import { openModelSource, type ModelSourceReader } from '../../worker/models/source.js';
import { ModelTokenizer } from '../../worker/models/tokenizer.js';
import type { TensorInfo } from '../../worker/models/safetensors.js';
import { badRequest } from '../errors.js';
import type { ModelFileRecord, NewModel } from '../registry/registry.js';

/** A file as the caller declares it; chunk fields both null when the caller computed none. */
export interface DeclaredModelFile {
  path: string;
  size: number;
  sha256: string;
  chunkBytes: number | null;
  chunkSha256: string[] | null;
}

export interface RegistrationRequest {
  name: string;
  source: string;
  files: DeclaredModelFile[] | null;
  ttftSloMs: number | null;
  gpuKeepAliveMs: number | null;
  hostKeepAliveMs: number | null;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Source problems are the caller's: a 400 that says what is wrong, never a 500. */
function sourceError(source: string, e: unknown): Error {
  if (e instanceof ModelFormatError && e.code !== 'unreachable') {
    return badRequest(`model at '${source}' is not usable: ${e.message}`, 'source', 'invalid_model');
  }
  return badRequest(`cannot read model source '${source}': ${message(e)}`, 'source', 'source_unreachable');
}

function checkDeclaredFiles(declared: DeclaredModelFile[], actual: { path: string; size: number }[]): void {
  const byPath = new Map(declared.map((f) => [f.path, f]));
  for (const f of actual) {
    const d = byPath.get(f.path);
    if (!d) throw badRequest(`files does not list '${f.path}', which the model needs`, 'files', 'files_mismatch');
    if (d.size !== f.size) {
      throw badRequest(`files gives '${f.path}' ${d.size} bytes; the source has ${f.size}`, 'files', 'files_mismatch');
    }
  }
}

/** The declared chunk hashes, checked for shape; null when the file declares none. */
function declaredChunks(f: DeclaredModelFile): ModelFileRecord | null {
  if (f.chunkBytes === null && f.chunkSha256 === null) return null;
  if (f.chunkBytes === null || f.chunkSha256 === null) {
    throw badRequest(`files entry '${f.path}' must give both chunkBytes and chunkSha256, or neither`, 'files', 'files_mismatch');
  }
  const expected = chunkCount(f.size, f.chunkBytes);
  if (f.chunkSha256.length !== expected) {
    throw badRequest(
      `files entry '${f.path}' has ${f.chunkSha256.length} chunk hashes; ${f.size} bytes in chunks of ${f.chunkBytes} make ${expected}`,
      'files',
      'files_mismatch',
    );
  }
  return { path: f.path, size: f.size, sha256: f.sha256, chunkBytes: f.chunkBytes, chunkSha256: f.chunkSha256 };
}

/** Declared files with chunk hashes as given; the others hashed from the source, digests compared. */
async function completeDeclaredFiles(source: ModelSourceReader, sourceUri: string, declared: DeclaredModelFile[]): Promise<ModelFileRecord[]> {
  const complete = declared.map(declaredChunks);
  const missing = declared.filter((_, i) => complete[i] === null);
  let hashed: ModelFileRecord[] = [];
  if (missing.length > 0) {
    try {
      hashed = await hashModelFiles(source, missing, null);
    } catch (e) {
      throw sourceError(sourceUri, e);
    }
  }
  const byPath = new Map(hashed.map((h) => [h.path, h]));
  return declared.map((f, i) => {
    const given = complete[i];
    if (given) return given;
    const computed = byPath.get(f.path)!;
    if (computed.sha256 !== f.sha256) {
      throw badRequest(`files gives '${f.path}' sha256 ${f.sha256}; the source has ${computed.sha256}`, 'files', 'files_mismatch');
    }
    return computed;
  });
}

function parameterCount(inspection: ModelInspection): number {
  let n = 0;
  for (const t of inspection.tensors.values()) n += t.shape.reduce((a, b) => a * b, 1);
  return n;
}

/** A registration ready to store, and the checkpoint's tensors its inspection read (the scheduler plans cold starts from them). */
export interface PreparedRegistration {
  model: NewModel;
  tensors: Map<string, TensorInfo>;
}

export async function prepareRegistration(req: RegistrationRequest): Promise<PreparedRegistration> {
  let source: ModelSourceReader;
  let inspection: ModelInspection;
  try {
    source = openModelSource(req.source);
    inspection = await inspectModel(source);
  } catch (e) {
    throw sourceError(req.source, e);
  }
  try {
    ModelTokenizer.fromJson(inspection.tokenizerJson, inspection.tokenizerConfigJson);
  } catch (e) {
    throw badRequest(`the tokenizer of the model at '${req.source}' cannot be loaded: ${message(e)}`, 'source', 'invalid_model');
  }
  let files: ModelFileRecord[];
  if (req.files) {
    checkDeclaredFiles(req.files, inspection.files);
    files = await completeDeclaredFiles(source, req.source, req.files);
  } else {
    try {
      files = await hashModelFiles(source, inspection.files, null);
    } catch (e) {
      throw sourceError(req.source, e);
    }
  }
  const { config } = inspection;
  const model: NewModel = {
    name: req.name,
    source: req.source,
    files,
    configJson: inspection.configJson,
    tokenizerJson: inspection.tokenizerJson,
    tokenizerConfigJson: inspection.tokenizerConfigJson,
    eosTokenIds: config.eosTokenIds,
    architecture: config.architecture,
    parameters: parameterCount(inspection),
    bytes: inspection.totalBytes,
    layers: config.numLayers,
    contextLength: config.maxPositionEmbeddings,
    ttftSloMs: req.ttftSloMs,
    gpuKeepAliveMs: req.gpuKeepAliveMs,
    hostKeepAliveMs: req.hostKeepAliveMs,
  };
  return { model, tensors: inspection.tensors };
}
