// What registering a model checks before anything is stored: the source opens, its files
// form a model paraserve can serve (config, safetensors, tokenizer — inspectModel says what is
// wrong otherwise), and the file list with digests matches what is there. When the caller
// sends no digests the gateway hashes the files itself (slow for big models: the CLI hashes
// locally with a progress bar and sends them).
import { ModelFormatError } from '../../worker/models/errors.js';
import { hashModelFiles, inspectModel, type ModelInspection } from '../../worker/models/inspect.js';
import { openModelSource, type ModelSourceReader } from '../../worker/models/source.js';
import { ModelTokenizer } from '../../worker/models/tokenizer.js';
import { badRequest } from '../errors.js';
import type { ModelFileRecord, NewModel } from '../registry/registry.js';

export interface RegistrationRequest {
  name: string;
  source: string;
  files: ModelFileRecord[] | null;
  ttftSloMs: number | null;
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

function checkDeclaredFiles(declared: ModelFileRecord[], actual: { path: string; size: number }[]): void {
  const byPath = new Map(declared.map((f) => [f.path, f]));
  for (const f of actual) {
    const d = byPath.get(f.path);
    if (!d) throw badRequest(`files does not list '${f.path}', which the model needs`, 'files', 'files_mismatch');
    if (d.size !== f.size) {
      throw badRequest(`files gives '${f.path}' ${d.size} bytes; the source has ${f.size}`, 'files', 'files_mismatch');
    }
  }
}

function parameterCount(inspection: ModelInspection): number {
  let n = 0;
  for (const t of inspection.tensors.values()) n += t.shape.reduce((a, b) => a * b, 1);
  return n;
}

export async function prepareRegistration(req: RegistrationRequest): Promise<NewModel> {
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
    files = req.files;
  } else {
    try {
      files = await hashModelFiles(source, inspection.files, null);
    } catch (e) {
      throw sourceError(req.source, e);
    }
  }
  const { config } = inspection;
  return {
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
  };
}
