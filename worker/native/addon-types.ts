// Everything the native addon (native/) exports, in one place. The addon's C++ N-API layer
// must match this file; worker/native/addon.ts loads the binary and wraps each export once
// so that native errors become the typed classes of worker/native/errors.ts.
// Conventions: opaque handles are branded; optional values are `T | null`, never `?:`;
// anything that waits on compute or a device returns a Promise.

declare const hostBufferBrand: unique symbol;
declare const stageBrand: unique symbol;
declare const linkBrand: unique symbol;

/** Host memory owned by the addon (pinned where the CUDA backend can pin it). */
export type HostBufferHandle = { readonly [hostBufferBrand]: 'HostBuffer' };
/** A model stage (layer range) materialised on one device of one backend. */
export type StageHandle = { readonly [stageBrand]: 'Stage' };
/**
 * One end of a device-to-device link carrying activations from a pipeline stage to the next
 * (a two-rank NCCL communicator on GPUs; the CPU backend has none).
 */
export type LinkHandle = { readonly [linkBrand]: 'Link' };

export type BackendName = 'cpu' | 'cuda';
export type DType = 'f32' | 'f16' | 'bf16';

export interface DeviceInfo {
  index: number;
  kind: BackendName;
  name: string;
  totalBytes: number;
  freeBytes: number;
}

export interface BuildInfo {
  /** Backends compiled into this binary; "cpu" always. */
  backends: BackendName[];
  /** Backends that can execute stages now (a compiled backend may only list devices yet). */
  stageBackends: BackendName[];
  /** Why CUDA was not compiled in, as the build decided; null when it was. */
  cudaSkippedReason: string | null;
  version: string;
}

/** The host cache's memory: one region allocated once, buffers carved out of it. */
export interface HostPoolInfo {
  bytes: number;
  freeBytes: number;
  /** The largest buffer that can be allocated now. */
  largestFreeBytes: number;
  /** false where pinning failed: pageable memory (host-to-GPU copies run slower). */
  pinned: boolean;
}

export interface HostBufferInfo {
  bytes: number;
  /** false where pinning failed or the backend does not pin: pageable memory. */
  pinned: boolean;
}

/** Shape of a stage: every field always set (derived from config.json by worker/models). */
export interface StageSpec {
  backend: BackendName;
  device: number;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  /** Total layers of the model; the stage holds [layerStart, layerEnd). */
  numLayers: number;
  layerStart: number;
  layerEnd: number;
  hasEmbeddings: boolean;
  hasHead: boolean;
  /** LM head shares the embedding matrix: the head stage binds model.embed_tokens.weight. */
  tieWordEmbeddings: boolean;
  attentionBias: boolean;
  rmsNormEps: number;
  ropeTheta: number;
  rope: RopeScaling;
  /** KV cache capacity of each sequence, in tokens. */
  maxContext: number;
  /** Type computations keep activations in; weights are converted from their stored dtype. */
  computeDType: DType;
}

export type RopeScaling =
  | { kind: 'none' }
  | { kind: 'linear'; factor: number }
  | {
      kind: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    };

/** Where one tensor's bytes sit in a host buffer: a copy plan entry. */
export interface TensorBinding {
  /** Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight". */
  name: string;
  dtype: DType;
  shape: number[];
  buffer: HostBufferHandle;
  offset: number;
}

export interface ForwardInput {
  /** Caller-chosen id of a sequence; its KV cache lives in the stage until released. */
  sequence: number;
  /** Position of the first input token; earlier positions must already be cached. */
  position: number;
  /** Token ids, for a stage with embeddings; null otherwise. */
  tokens: Int32Array | null;
  /**
   * Hidden states (tokens x hiddenSize), for a stage without embeddings: from JS, or the ones
   * that came over a link (LinkInput); null on a stage with embeddings.
   */
  hidden: Float32Array | LinkInput | null;
}

/** Hidden states a forward takes from the receiving end of a link: what was sent under tag. */
export interface LinkInput {
  link: LinkHandle;
  tag: number;
  /** Rows (tokens) of the activation; the forward fails if the sender sent another size. */
  tokenCount: number;
}

/** Where forwardToLink sends its output: the sending end of a link, under a tag. */
export interface LinkOutput {
  link: LinkHandle;
  /** Any integer in [0, 2^53); the receiving side is told it out of band and takes the activation by it. */
  tag: number;
}

export interface LinkOptions {
  device: number;
  /** From linkUniqueId, the same on both ends. */
  uniqueId: Buffer;
  /** true on the stage that sends (the earlier one), false on the one that receives. */
  sends: boolean;
  /** openLink rejects (NcclError) when the other end has not joined by then. */
  timeoutMs: number;
}

export interface NativeAddon {
  buildInfo(): BuildInfo;
  /** Devices of a backend; [] for "cuda" when it is not compiled in or no GPU is present. */
  listDevices(backend: BackendName): DeviceInfo[];

  allocHostBuffer(bytes: number, pinned: boolean): HostBufferHandle;
  hostBufferInfo(buffer: HostBufferHandle): HostBufferInfo;
  /** Copies data into the buffer at offset; throws RangeError past its end. */
  writeHostBuffer(buffer: HostBufferHandle, offset: number, data: Uint8Array): void;
  /**
   * Copies `bytes` bytes between host buffers on a thread of the pool; settles once copied.
   * Rejects with InvalidArgumentError when either range runs past its buffer's end.
   */
  copyHostBuffer(from: HostBufferHandle, fromOffset: number, to: HostBufferHandle, toOffset: number, bytes: number): Promise<void>;
  freeHostBuffer(buffer: HostBufferHandle): void;
  /**
   * Allocates the host pool (pinned where possible; pageable with a logged warning when
   * pinning fails). From then on allocHostBuffer carves buffers out of it and throws
   * OutOfMemoryError when it is full. Replaces an earlier pool; live buffers keep theirs.
   */
  configureHostPool(bytes: number, pinned: boolean): HostPoolInfo;
  /** The current host pool, or null when none was configured. */
  hostPoolInfo(): HostPoolInfo | null;

  /**
   * Creates a device's context and library handles ahead of its first stage (runtime init,
   * overlapped with fetching). Resolves at once on the CPU backend.
   */
  prepareDevice(backend: BackendName, device: number): Promise<void>;

  /** Allocates the stage's weights and KV cache space on its device. */
  createStage(spec: StageSpec): StageHandle;
  /**
   * The stage on another device of its backend, its weights copied device to device (queued:
   * a forward on the clone waits for them, as after a swap-in); sequences are not copied.
   * NotImplementedError on the CPU backend (one device).
   */
  cloneStage(stage: StageHandle, device: number): StageHandle;
  /** Whether `from` can copy straight into `to` (GPU peer access); false on the CPU backend. */
  peerAccess(backend: BackendName, from: number, to: number): boolean;
  /**
   * Copies (and converts) one tensor into the stage; checks its name and shape. On CUDA the
   * copy is queued (chunked, on the stage's copy stream) and this returns at once; a forward
   * waits only for the layers it reaches, so compute starts before the copy ends.
   */
  bindTensor(stage: StageHandle, binding: TensorBinding): void;
  /** Names of tensors the stage still lacks; [] once it can run. */
  missingTensors(stage: StageHandle): string[];
  /**
   * Runs the stage over the input tokens. Resolves to the logits of the last token
   * (vocabSize floats) on a stage with the head, else to the hidden states of all tokens.
   */
  forward(stage: StageHandle, input: ForwardInput): Promise<Float32Array>;
  /**
   * Runs several distinct sequences in one pass (continuous batching): each input as in
   * forward, and the outputs (logits or hidden states) in input order. Each input's output is
   * what forward would give for it alone (bit-identical on the CPU backend). Rejects with
   * InvalidArgumentError, before anything runs, for an empty list, an input forward would
   * refuse (the message names inputs[i]), or a sequence named twice. A batch that fails
   * while running may have advanced some of its sequences; rerunning an input at its own
   * position is always safe (cached tokens at and after it are discarded).
   */
  forwardBatch(stage: StageHandle, inputs: readonly ForwardInput[]): Promise<Float32Array[]>;
  /**
   * forward on a stage without the head whose output hidden states go over a link instead of
   * back to JS; resolves once the send is queued (it lands on the other end by itself).
   */
  forwardToLink(stage: StageHandle, input: ForwardInput, output: LinkOutput): Promise<void>;
  /** Whether stages of the backend can open links (CUDA builds: NCCL); false on the CPU. */
  linksAvailable(backend: BackendName): boolean;
  /**
   * A fresh id for a link. The process that made it coordinates the link's setup until both
   * ends have joined, so a worker that takes part makes it. NotImplementedError on the CPU
   * backend (no links).
   */
  linkUniqueId(backend: BackendName): Buffer;
  /**
   * Joins one end of a link; resolves once the other end (another process, or another device
   * of this one) has joined too and one empty message has gone through, so the first real
   * activation pays no setup.
   */
  openLink(backend: BackendName, options: LinkOptions): Promise<LinkHandle>;
  /** Stops a link (queued sends dropped, waiting forwards fail); idempotent. */
  closeLink(link: LinkHandle): void;
  /** Frees a sequence's KV cache; unknown sequences are ignored. */
  releaseSequence(stage: StageHandle, sequence: number): void;
  /** Bytes the stage holds on its device (weights plus allocated KV cache). */
  stageDeviceBytes(stage: StageHandle): number;
  /** Resolves once every weight copy queued by bindTensor has landed on the device. */
  awaitStageCopies(stage: StageHandle): Promise<void>;
  /**
   * Runs the stage's kernels once on placeholder inputs, before its weights are bound (call
   * it right after createStage): on CUDA the one-time costs of a fresh device — loading
   * kernels, cuBLAS's choices, the decode graph — are paid here instead of by the first
   * request. cuBLAS chooses per shape, so besides a default prefill it runs one of each
   * length in `prefillTokens` (the prompts of requests known to wait for the stage).
   * Resolves at once on the CPU backend. Leaves no sequence behind.
   */
  warmUpStage(stage: StageHandle, prefillTokens?: readonly number[]): Promise<void>;
  disposeStage(stage: StageHandle): void;

  /**
   * Benchmark baselines, in seconds: one plain copy of the whole buffer to the device (on
   * CUDA one cudaMemcpyAsync after a warm-up), and one device-to-device copy of bytes
   * (device memory bandwidth = 2 × bytes ÷ seconds).
   */
  measureHostToDevice(backend: BackendName, buffer: HostBufferHandle, device: number): Promise<number>;
  measureDeviceMemory(backend: BackendName, device: number, bytes: number): Promise<number>;

  /** sd_notify(3): sends state (e.g. "READY=1") to $NOTIFY_SOCKET; false when unset. */
  notifySystemd(state: string): boolean;
}
