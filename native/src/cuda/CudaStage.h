// A stage on a GPU. Weights live in device memory in the stage's compute type (f16, bf16 or
// f32), with each layer's q/k/v and gate/up projections fused into one matrix so a decode
// step reads them in one matrix product. Binding a tensor queues its host-to-device copy on
// the stage's copy stream (in chunks) and records the ready event of its layer; a forward
// pass on the compute stream waits on each layer's event just before that layer, so compute
// starts while later layers are still being copied (layer-pipelined swap-in).
#pragma once

#ifdef PARASERVE_WITH_CUDA

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/Backend.h"
#include "core/StageShape.h"
#include "cuda/CudaCheck.h"
#include "cuda/NcclLink.h"

namespace paraserve::cuda {

class CudaStage final : public Stage {
 public:
  explicit CudaStage(const StageSpec& spec);
  ~CudaStage() override;
  CudaStage(const CudaStage&) = delete;
  CudaStage& operator=(const CudaStage&) = delete;

  void bindTensor(const TensorBinding& binding) override;
  std::vector<std::string> missingTensors() const override;
  std::vector<float> forward(const ForwardRequest& request) override;
  std::vector<std::vector<float>> forwardBatch(const std::vector<ForwardRequest>& requests) override;
  void releaseSequence(int64_t sequence) override;
  void waitForCopies() override;
  // A prefill of up to 32 tokens, one of each of `prefillTokens` (cut into passes as a forward
  // cuts them) and one decode step of a placeholder sequence, on whatever the weight memory
  // holds (results discarded): loads the kernels and cuBLAS's choices of this stage's shapes
  // and captures a decode graph once. On an H200 a prefill of a length not seen before costs
  // about 14 ms more than the next one of that length, whatever other lengths ran.
  void warmUp(const std::vector<int64_t>& prefillTokens) override;
  // Copies the weight allocation to a new stage on `device` with one peer copy on the new
  // stage's copy stream (after this stage's own copies have landed).
  std::unique_ptr<Stage> cloneTo(int64_t device) override;
  uint64_t deviceBytes() const override;

 private:
  // Pointers into weights_.
  struct Layer {
    uint8_t* inputNorm = nullptr;  // (hidden)
    uint8_t* qkv = nullptr;        // ((heads + 2 kvHeads) * headDim, hidden): q rows, then k, then v
    uint8_t* qkvBias = nullptr;    // ((heads + 2 kvHeads) * headDim), attentionBias only
    uint8_t* wo = nullptr;         // (hidden, heads * headDim)
    uint8_t* postNorm = nullptr;   // (hidden)
    uint8_t* gateUp = nullptr;     // (2 * inter, hidden): gate rows, then up
    uint8_t* down = nullptr;       // (hidden, inter)
  };

  // Where a bound tensor's bytes go, and which ready event covers them.
  struct Destination {
    uint8_t* data = nullptr;
    size_t event = 0;
  };

  struct Slot {
    TensorSlot expected;
    bool bound = false;
  };

  // One sequence's KV cache: per layer, keys then values, each (capacity, kvHeads * headDim).
  struct Sequence {
    DeviceBuffer cache;
    int64_t capacity = 0;
    int64_t length = 0;  // cached positions [0, length)
  };

  // A slice of one request that runs in a pass: tokens [offset, offset + count) of it.
  struct Segment {
    size_t request = 0;
    int64_t offset = 0;
    int64_t count = 0;
  };

  // Scratch of one pass, carved from scratch_ (CudaStage.cpp, carvePass).
  struct PassBuffers {
    int32_t* tokenIds = nullptr;
    float* x = nullptr;  // the residual stream (tokens x hidden, fp32)
    uint8_t* normed = nullptr;
    float* qkv = nullptr;
    uint8_t* q16 = nullptr;
    uint8_t* attnOut = nullptr;
    float* gateUp = nullptr;
    uint8_t* activated = nullptr;
    float* lastRows = nullptr;
    uint8_t* lastNormed = nullptr;
    float* logits = nullptr;
    float* scores = nullptr;
    uint8_t* probabilities = nullptr;
  };

  // A captured decode step of one sequence, valid while the pointers it baked in are.
  struct DecodeGraph {
    cudaGraphExec_t exec = nullptr;
    const uint8_t* cache = nullptr;
    int64_t capacity = 0;
    const uint8_t* scratch = nullptr;
    DecodeGraph() = default;
    DecodeGraph(DecodeGraph&& other) noexcept { *this = std::move(other); }
    DecodeGraph& operator=(DecodeGraph&& other) noexcept {
      std::swap(exec, other.exec);
      cache = other.cache;
      capacity = other.capacity;
      scratch = other.scratch;
      return *this;
    }
    ~DecodeGraph() {
      if (exec != nullptr) cudaGraphExecDestroy(exec);
    }
  };

  // Per request of a forward: the hidden states that came over its input link, and the
  // device buffer its output rows gather in before they go over its output link.
  struct LinkIO {
    std::vector<std::unique_ptr<LinkArrival>> arrivals;
    std::vector<DeviceBuffer> sends;
  };

  Destination destinationFor(const std::string& name);
  void releaseLandedHostBuffers();
  void freeSequence(int64_t sequence);
  void freeReleasedSequences();
  std::vector<std::vector<Segment>> planPasses(const std::vector<ForwardRequest>& requests) const;
  void runPass(const std::vector<ForwardRequest>& requests, const std::vector<Segment>& segments, LinkIO& links,
               std::vector<std::vector<float>>& outputs);
  PassBuffers carvePass(int64_t tokens, int64_t segmentCount, int64_t maxAttention);
  // Everything of a pass from the embedding (or the uploaded hidden states) to the logits
  // in scratch, on the compute stream; capturable into a graph when positionOnDevice is set
  // and waitForLayers is false.
  void enqueuePass(const std::vector<ForwardRequest>& requests, const std::vector<Segment>& segments,
                   const PassBuffers& buffers, int64_t tokens, const int64_t* positionOnDevice, bool waitForLayers);
  void attention(const PassBuffers& buffers, const Segment& segment, int64_t position, Sequence& sequence,
                 size_t layer, int64_t row, const int64_t* positionOnDevice);
  // Whether attention of count tokens over keys keys runs in the decode kernel.
  bool usesDecodeKernel(int64_t count, int64_t keys) const;
  bool copiesLanded();
  void launchDecodeGraph(const ForwardRequest& request, Sequence& sequence, const PassBuffers& buffers);
  void ensureCapacity(Sequence& sequence, int64_t positions);
  uint8_t* keysOf(const Sequence& sequence, size_t layer) const;
  uint8_t* valuesOf(const Sequence& sequence, size_t layer) const;
  void ensureScratch(uint64_t bytes);
  // out (rows x outFeatures) = in (rows x inFeatures, act) · weight^T (outFeatures x inFeatures,
  // act); out is fp32 (outFp32) or act; accumulate adds to out instead of overwriting it.
  void linear(const void* in, const void* weight, int64_t rows, int64_t inFeatures, int64_t outFeatures, void* out,
              bool outFp32, bool accumulate);

  StageSpec spec_;
  int device_;
  DType act_;
  uint64_t actSize_;
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  // Ready events: [0] embeddings, [1 + i] layer i of the stage, [last] final norm and head.
  std::vector<cudaEvent_t> ready_;
  DeviceBuffer invFreq_;
  DeviceBuffer weights_;  // every weight tensor of the stage
  std::vector<Layer> layers_;
  uint8_t* embed_ = nullptr;   // (vocab, hidden); the head too when tieWordEmbeddings
  uint8_t* norm_ = nullptr;    // (hidden)
  uint8_t* lmHead_ = nullptr;  // (vocab, hidden), untied head only
  std::vector<Slot> slots_;  // layer order
  std::unordered_map<std::string, size_t> slotIndex_;
  DeviceBuffer convertStaging_;  // raw bytes of a tensor stored in another dtype, before conversion
  std::vector<std::shared_ptr<const HostBuffer>> copiesInFlight_;  // kept alive until the copy stream drains
  DeviceBuffer scratch_;
  DeviceBuffer decodePosition_;  // int64 position a decode graph reads
  std::map<int64_t, DecodeGraph> decodeGraphs_;  // by sequence
  std::mutex mutex_;  // one forward, bind or release at a time: they share the streams
  std::map<int64_t, Sequence> sequences_;
  std::atomic<uint64_t> kvBytes_{0};
  std::atomic<uint64_t> scratchBytes_{0};
  // Sequences released while a forward held the stage (the JS thread never waits for one):
  // freed when that forward ends.
  std::mutex releasedMutex_;
  std::vector<int64_t> released_;
};

}  // namespace paraserve::cuda

#endif  // PARASERVE_WITH_CUDA
