// The one interface every compute backend fills (CPU always, CUDA where built), and the
// plain data that crosses it. The N-API layer (Addon*.cpp) converts JS values into these
// structs, validates them against the stage's shape (StageShape.h) and calls a Backend; the
// backends never see N-API. Mirrors worker/native/addon-types.ts field for field.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/DType.h"
#include "core/Errors.h"
#include "core/HostBuffer.h"

namespace paraserve {

enum class BackendKind { Cpu, Cuda };

const char* backendName(BackendKind kind);

struct RopeScaling {
  enum class Kind { None, Linear, Llama3 };
  Kind kind = Kind::None;
  double factor = 1.0;                           // linear, llama3
  double lowFreqFactor = 0.0;                    // llama3
  double highFreqFactor = 0.0;                   // llama3
  double originalMaxPositionEmbeddings = 0.0;    // llama3
};

// Shape of a stage: the layer range [layerStart, layerEnd) of a Llama-family model.
struct StageSpec {
  BackendKind backend = BackendKind::Cpu;
  int64_t device = 0;
  int64_t vocabSize = 0;
  int64_t hiddenSize = 0;
  int64_t intermediateSize = 0;
  int64_t numAttentionHeads = 0;
  int64_t numKeyValueHeads = 0;
  int64_t headDim = 0;
  int64_t numLayers = 0;
  int64_t layerStart = 0;
  int64_t layerEnd = 0;
  bool hasEmbeddings = false;
  bool hasHead = false;
  bool tieWordEmbeddings = false;
  bool attentionBias = false;
  double rmsNormEps = 0.0;
  double ropeTheta = 0.0;
  RopeScaling rope;
  int64_t maxContext = 0;  // KV cache capacity of each sequence, in tokens
  DType computeDType = DType::F32;
};

struct DeviceInfo {
  int64_t index = 0;
  BackendKind kind = BackendKind::Cpu;
  std::string name;
  uint64_t totalBytes = 0;
  uint64_t freeBytes = 0;
};

// One tensor's bytes in a host buffer (a copy-plan entry), already checked against the
// buffer's size and the stage's expected shape by the caller. The binding shares ownership
// of the buffer so a backend that copies asynchronously (CUDA) keeps it alive until its copy
// has landed, even when JS frees the buffer right after bindTensor returns.
struct TensorBinding {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::shared_ptr<const HostBuffer> buffer;
  uint64_t offset = 0;
};

// One direction of a pipeline link between the devices of two adjacent stages (NCCL on GPUs):
// a forward on the sending end passes its output hidden states to a forward on the receiving
// end with no host copy. Each activation travels under a tag the caller picks and tells the
// receiving side out of band (the pipeline's gRPC control message).
class StageLink {
 public:
  virtual ~StageLink() = default;
  virtual BackendKind backend() const = 0;
  virtual int64_t device() const = 0;
  virtual bool sends() const = 0;
  // Stops the link: queued sends are dropped and waiting receives fail. Never blocks.
  virtual void close() = 0;
};

// Input: tokens on a stage with embeddings; otherwise hidden states (tokenCount x hiddenSize,
// row-major) in `hidden`, or inputTokens rows arriving over inputLink (its receiving end)
// under inputTag. Output: returned, or sent over outputLink (its sending end, on a stage
// without the head) under outputTag, in which case forward returns no values for it.
struct ForwardRequest {
  int64_t sequence = 0;
  int64_t position = 0;  // position of the first input token
  std::vector<int32_t> tokens;
  std::vector<float> hidden;
  std::shared_ptr<StageLink> inputLink;
  uint64_t inputTag = 0;
  int64_t inputTokens = 0;
  std::shared_ptr<StageLink> outputLink;
  uint64_t outputTag = 0;
};

// A model stage materialised on one device.
// Threading: bindTensor, missingTensors, releaseSequence and deviceBytes are called on the JS
// thread; forward on worker threads, concurrently for different sequences (and serialised
// per sequence by the stage). The addon never calls bindTensor while a forward runs.
class Stage {
 public:
  virtual ~Stage() = default;
  // Copies and converts one tensor into the stage, replacing an earlier binding of it.
  virtual void bindTensor(const TensorBinding& binding) = 0;
  // Names of expected tensors not bound yet, in layer order.
  virtual std::vector<std::string> missingTensors() const = 0;
  // Logits of the last token (vocabSize) on a head stage, else hidden states of all tokens.
  // Appends the tokens to the sequence's KV cache at request.position, discarding any
  // cached tokens at or after it; throws InvalidArgumentError past maxContext.
  virtual std::vector<float> forward(const ForwardRequest& request) = 0;
  // Several distinct sequences in one pass (continuous batching): each request as in
  // forward, outputs in request order. Backends that can share weight reads across the
  // batch override this; the default runs the requests one after another.
  virtual std::vector<std::vector<float>> forwardBatch(const std::vector<ForwardRequest>& requests) {
    std::vector<std::vector<float>> outputs;
    outputs.reserve(requests.size());
    for (const ForwardRequest& request : requests) outputs.push_back(forward(request));
    return outputs;
  }
  // Frees a sequence's KV cache; unknown sequences are ignored.
  virtual void releaseSequence(int64_t sequence) = 0;
  // A stage of the same spec on another device of the same backend, its weights copied
  // device to device (queued; the clone's forward waits for them like a swap-in's). Sequences
  // are not copied. NotImplementedError where the backend has one device.
  virtual std::unique_ptr<Stage> cloneTo(int64_t device) {
    (void)device;
    throw NotImplementedError("this backend has one device: stages cannot move between devices");
  }
  // Runs the stage's kernels once on placeholder inputs, before its weights are bound, so the
  // device's one-time costs (loading kernels, library heuristics, graph setup) are paid during
  // runtime init instead of by the first request: a default prefill, a prefill of each of
  // `prefillTokens` (the prompt lengths of requests known to wait for the stage: library
  // choices are made per shape) and a decode step. Called on a worker thread, with no forward
  // running; leaves no sequence behind. No-op where first use costs nothing extra.
  virtual void warmUp(const std::vector<int64_t>& prefillTokens) { (void)prefillTokens; }
  // Blocks until every queued weight copy has landed (bindTensor may return before, on
  // backends that copy asynchronously). Called on a worker thread.
  virtual void waitForCopies() {}
  // Weights plus KV cache currently allocated, in bytes.
  virtual uint64_t deviceBytes() const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind kind() const = 0;
  // false while the backend can list devices and allocate but not run stages.
  virtual bool canExecuteStages() const = 0;
  virtual std::vector<DeviceInfo> listDevices() = 0;
  // Page-locked memory when pinned is asked for and the backend can pin, else pageable.
  virtual std::unique_ptr<HostBuffer> allocHost(uint64_t bytes, bool pinned) = 0;
  // Whether device `from` can copy straight into device `to` (peer access over NVLink or
  // PCIe), which a move between devices uses instead of the host path. False by default.
  virtual bool peerAccess(int64_t from, int64_t to) {
    (void)from;
    (void)to;
    return false;
  }
  // Creates the device context and library handles of a device ahead of the first stage, so
  // runtime init overlaps fetching; runs on a worker thread. No-op where there is none.
  virtual void prepareDevice(int64_t device) { (void)device; }
  // A fresh id for a link between two stages; the process that made it coordinates the link's
  // setup until both ends have joined, so it must outlive that. NotImplementedError where the
  // backend has no links.
  // Whether this backend's stages can open links at all (linkUniqueId, openLink).
  virtual bool hasLinks() const { return false; }
  virtual std::vector<uint8_t> linkUniqueId() { throw noLinks(); }
  // Joins one end of the link `id` on `device`; returns once the other end has joined too and
  // the connection is up, NcclError after timeoutSeconds. Runs on a worker thread.
  virtual std::shared_ptr<StageLink> openLink(int64_t device, const std::vector<uint8_t>& id, bool sends,
                                              double timeoutSeconds) {
    (void)device;
    (void)id;
    (void)sends;
    (void)timeoutSeconds;
    throw noLinks();
  }
  // Baselines for benchmarks, in seconds: one plain copy of the whole buffer to the device,
  // and one device-to-device copy of bytes (device memory bandwidth = 2 * bytes / time).
  virtual double measureHostToDevice(const HostBuffer& buffer, int64_t device) = 0;
  virtual double measureDeviceMemory(int64_t device, uint64_t bytes) = 0;
  // spec has passed validateStageSpec; the backend checks what is specific to it.
  virtual std::unique_ptr<Stage> createStage(const StageSpec& spec) = 0;

 private:
  NotImplementedError noLinks() const {
    return NotImplementedError(std::string("the ") + backendName(kind()) + " backend has no device-to-device links");
  }
};

}  // namespace paraserve
