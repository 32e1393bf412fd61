// Registered models in the form serving needs: parsed config, a ready tokenizer, the range to
// load and the context a request may use. Built from the registry on first use and cached, so
// a request costs one primary-key lookup, not a tokenizer parse.
import type { ModelConfig } from '../../worker/models/model-config.js';
import { parseModelConfig } from '../../worker/models/config.js';
import { wholeModelRange } from '../../worker/models/stage-plan.js';
import { ModelTokenizer } from '../../worker/models/tokenizer.js';
import { ApiError, modelNotFound } from '../errors.js';
import type { ModelRecord, Registry } from '../registry/registry.js';
import type { LoadableModel } from '../scheduler/loop.js';

/**
 * Context window the gateway asks workers for, whatever larger window a model declares: the KV
 * cache of one sequence is allocated at load time, and 128k-token windows would not fit.
 */
export const MAX_CONTEXT_TOKENS = 4096;

export interface ServingModel extends LoadableModel {
  record: ModelRecord;
  config: ModelConfig;
  tokenizer: ModelTokenizer;
  /** Ids that end generation: the registered model's and the tokenizer's eos ids. */
  stopTokenIds: number[];
  /** Prompt plus completion may not exceed this many tokens (equals maxContext). */
  contextLength: number;
}

export class ModelCatalog {
  private readonly cache = new Map<string, ServingModel>();

  constructor(
    private readonly registry: Registry,
    private readonly maxContextTokens: number,
  ) {}

  /** null when no such model is registered. */
  get(name: string): ServingModel | null {
    const record = this.registry.getModel(name);
    if (!record) {
      this.cache.delete(name);
      return null;
    }
    const cached = this.cache.get(name);
    if (cached && cached.record.createdAt === record.createdAt) return cached;
    const model = this.build(record);
    this.cache.set(name, model);
    return model;
  }

  forget(name: string): void {
    this.cache.delete(name);
  }

  private build(record: ModelRecord): ServingModel {
    const artifacts = this.registry.getModelArtifacts(record.name);
    if (!artifacts) throw modelNotFound(record.name);
    let config: ModelConfig;
    let tokenizer: ModelTokenizer;
    try {
      config = parseModelConfig(JSON.parse(artifacts.configJson));
      tokenizer = ModelTokenizer.fromJson(artifacts.tokenizerJson, artifacts.tokenizerConfigJson);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new ApiError(500, `model '${record.name}' is registered but cannot be served: ${why}`, 'server_error', 'model', 'model_unservable');
    }
    const contextLength = Math.min(config.maxPositionEmbeddings, this.maxContextTokens);
    return {
      name: record.name,
      bytes: record.bytes,
      source: record.source,
      files: record.files,
      configJson: artifacts.configJson,
      range: wholeModelRange(config),
      maxContext: contextLength,
      ttftSloMs: record.ttftSloMs,
      parameters: record.parameters,
      gpuKeepAliveMs: record.gpuKeepAliveMs,
      hostKeepAliveMs: record.hostKeepAliveMs,
      record,
      config,
      tokenizer,
      stopTokenIds: [...new Set([...artifacts.eosTokenIds, ...config.eosTokenIds, ...tokenizer.eosTokenIds])],
      contextLength,
    };
  }
}
