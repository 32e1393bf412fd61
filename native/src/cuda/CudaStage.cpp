// The GPU stage (see CudaStage.h): weight binding through the copy stream, the KV cache,
// and the forward pass as cuBLAS matrix products plus the kernels of CudaKernels.h.
//
// Matrix layout: tensors are row-major as in the checkpoint, cuBLAS is column-major, so a
// row-major (rows x out) = (rows x in) · W^T is computed as the column-major product
// W^T(op T of the stored (in x out) view) · X, with leading dimensions equal to row widths.
#ifdef PARASERVE_WITH_CUDA

#include "cuda/CudaStage.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdio>
#include <set>

#include "core/Errors.h"
#include "core/Rope.h"
#include "cuda/CudaKernels.h"

namespace paraserve::cuda {

namespace {

// Most tokens one pass runs through the stage; longer prompts run in several passes, so
// attention scratch stays bounded (heads x chunk x context).
constexpr int64_t kMaxPassTokens = 512;
// How long a forward waits for its input to come over a link: the previous stage had computed
// and queued it before telling this one, so only a broken link takes this long (and a forward
// held this long delays unloading the stage by as much).
constexpr double kLinkArrivalTimeoutSeconds = 10.0;

NcclLink& ncclLinkOf(const std::shared_ptr<StageLink>& link) {
  auto* nccl = dynamic_cast<NcclLink*>(link.get());
  if (nccl == nullptr) throw InvalidArgumentError("the link is not an NCCL link of the CUDA backend");
  return *nccl;
}
// Host-to-device copies are issued in pieces of this size: large enough to run at the
// PCIe limit, small enough that the copy stream interleaves with other stages' copies.
constexpr uint64_t kCopyChunkBytes = 32ull << 20;
// Smallest KV cache of a sequence, in positions; it then doubles up to maxContext.
constexpr int64_t kMinCapacity = 64;
constexpr uint64_t kScratchAlignment = 256;

cudaDataType cudaTypeOf(DType type) {
  switch (type) {
    case DType::F16:
      return CUDA_R_16F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

// Carves aligned pieces out of one scratch buffer.
class ScratchCarver {
 public:
  explicit ScratchCarver(uint8_t* base) : base_(base) {}
  uint8_t* take(uint64_t bytes) {
    uint8_t* out = base_ + used_;
    used_ += (bytes + kScratchAlignment - 1) / kScratchAlignment * kScratchAlignment;
    return out;
  }
  uint64_t used() const { return used_; }

 private:
  uint8_t* base_;
  uint64_t used_ = 0;
};

}  // namespace

// Keeps freed memory in the device's default pool (see DeviceBuffer); once per device.
void keepPoolMemory(int device) {
  cudaMemPool_t pool = nullptr;
  check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
  uint64_t keepAll = UINT64_MAX;
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keepAll), "cudaMemPoolSetAttribute");
}

DeviceBuffer::DeviceBuffer(uint64_t bytes, const char* what, cudaStream_t stream) : bytes_(bytes) {
  if (bytes == 0) return;
  void* data = nullptr;
  cudaError_t status = cudaMallocAsync(&data, static_cast<size_t>(bytes), stream);
  if (status == cudaErrorMemoryAllocation) {
    // Memory the pool keeps but nobody uses may be in pieces of the wrong size: give it back
    // to the driver and try once more.
    cudaGetLastError();
    int device = 0;
    cudaMemPool_t pool = nullptr;
    if (cudaGetDevice(&device) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess &&
        cudaDeviceSynchronize() == cudaSuccess) {
      cudaMemPoolTrimTo(pool, 0);
    }
    status = cudaMallocAsync(&data, static_cast<size_t>(bytes), stream);
  }
  if (status != cudaSuccess) {
    cudaGetLastError();
    size_t freeBytes = 0;
    size_t totalBytes = 0;
    cudaMemGetInfo(&freeBytes, &totalBytes);
    cudaGetLastError();
    const std::string message = std::string("allocating ") + std::to_string(bytes) + " bytes of device memory for " +
                                what + " failed: " + cudaGetErrorString(status) + " (" + std::to_string(freeBytes) +
                                " of " + std::to_string(totalBytes) + " bytes free on the device)";
    if (status == cudaErrorMemoryAllocation) throw OutOfMemoryError(message);
    throw CudaError(message);
  }
  data_ = static_cast<uint8_t*>(data);
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ == nullptr) return;
  const cudaError_t status = cudaFreeAsync(data_, nullptr);
  if (status != cudaSuccess) {
    std::fprintf(stderr, "paraserve native: cudaFreeAsync failed: %s\n", cudaGetErrorString(status));
  }
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), bytes_(other.bytes_) {
  other.data_ = nullptr;
  other.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    DeviceBuffer dropped(std::move(*this));
    data_ = other.data_;
    bytes_ = other.bytes_;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

CudaStage::CudaStage(const StageSpec& spec)
    : spec_(spec),
      device_(static_cast<int>(spec.device)),
      act_(spec.computeDType),
      actSize_(dtypeSize(spec.computeDType)) {
  useDevice(device_);
  const int64_t hidden = spec.hiddenSize;
  const int64_t qkvRows = (spec.numAttentionHeads + 2 * spec.numKeyValueHeads) * spec.headDim;
  const int64_t layerCount = spec.layerEnd - spec.layerStart;
  try {
    check(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking), "cudaStreamCreate (compute)");
    check(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking), "cudaStreamCreate (copy)");
    check(cublasCreate(&blas_), "cublasCreate");
    check(cublasSetStream(blas_, compute_), "cublasSetStream");
    ready_.resize(static_cast<size_t>(layerCount) + 2, nullptr);
    for (cudaEvent_t& event : ready_) check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");

    const std::vector<float> invFreq = ropeInverseFrequencies(spec.headDim, spec.ropeTheta, spec.rope);
    keepPoolMemory(device_);
    decodePosition_ = DeviceBuffer(sizeof(int64_t), "decode position", compute_);
    invFreq_ = DeviceBuffer(invFreq.size() * sizeof(float), "rotary frequencies", compute_);
    check(cudaStreamSynchronize(compute_), "cudaStreamSynchronize (allocation)");
    check(cudaMemcpy(invFreq_.data(), invFreq.data(), invFreq.size() * sizeof(float), cudaMemcpyHostToDevice),
          "cudaMemcpy (rotary frequencies)");

    // Every weight in one allocation: a swap-in pays for one cudaMalloc, not hundreds.
    // Offsets first (a dry run of the same carving), then the real pointers.
    for (int pass = 0; pass < 2; ++pass) {
      uint64_t used = 0;
      const auto take = [&](int64_t elements) -> uint8_t* {
        uint8_t* at = weights_.data() == nullptr ? nullptr : weights_.data() + used;
        used += (static_cast<uint64_t>(elements) * actSize_ + kScratchAlignment - 1) / kScratchAlignment *
                kScratchAlignment;
        return at;
      };
      layers_.assign(static_cast<size_t>(layerCount), Layer{});
      embed_ = spec.hasEmbeddings || (spec.hasHead && spec.tieWordEmbeddings) ? take(spec.vocabSize * hidden) : nullptr;
      for (Layer& layer : layers_) {
        layer.inputNorm = take(hidden);
        layer.qkv = take(qkvRows * hidden);
        layer.qkvBias = spec.attentionBias ? take(qkvRows) : nullptr;
        layer.wo = take(hidden * spec.numAttentionHeads * spec.headDim);
        layer.postNorm = take(hidden);
        layer.gateUp = take(2 * spec.intermediateSize * hidden);
        layer.down = take(hidden * spec.intermediateSize);
      }
      norm_ = spec.hasHead ? take(hidden) : nullptr;
      lmHead_ = spec.hasHead && !spec.tieWordEmbeddings ? take(spec.vocabSize * hidden) : nullptr;
      if (pass == 0) weights_ = DeviceBuffer(used, "weights", copy_);
    }
  } catch (...) {
    for (cudaEvent_t event : ready_) {
      if (event != nullptr) cudaEventDestroy(event);
    }
    if (blas_ != nullptr) cublasDestroy(blas_);
    if (copy_ != nullptr) cudaStreamDestroy(copy_);
    if (compute_ != nullptr) cudaStreamDestroy(compute_);
    throw;
  }
  for (TensorSlot& expected : stageTensors(spec)) {
    slotIndex_.emplace(expected.name, slots_.size());
    slots_.push_back({std::move(expected), false});
  }
}

CudaStage::~CudaStage() {
  if (cudaSetDevice(device_) == cudaSuccess) {
    cudaStreamSynchronize(copy_);
    cudaStreamSynchronize(compute_);
  }
  decodeGraphs_.clear();
  sequences_.clear();
  for (cudaEvent_t event : ready_) cudaEventDestroy(event);
  cublasDestroy(blas_);
  cudaStreamDestroy(copy_);
  cudaStreamDestroy(compute_);
  cudaGetLastError();
}

CudaStage::Destination CudaStage::destinationFor(const std::string& name) {
  const TensorRole role = tensorRole(spec_, name);
  const uint64_t hidden = static_cast<uint64_t>(spec_.hiddenSize);
  const uint64_t qRows = static_cast<uint64_t>(spec_.numAttentionHeads * spec_.headDim);
  const uint64_t kvRows = static_cast<uint64_t>(spec_.numKeyValueHeads * spec_.headDim);
  const uint64_t inter = static_cast<uint64_t>(spec_.intermediateSize);
  switch (role.part) {
    case TensorPart::Embeddings:
      return {embed_, 0};
    case TensorPart::FinalNorm:
      return {norm_, ready_.size() - 1};
    case TensorPart::LmHead:
      return {lmHead_, ready_.size() - 1};
    default:
      break;
  }
  Layer& layer = layers_[static_cast<size_t>(role.layer)];
  const size_t event = static_cast<size_t>(role.layer) + 1;
  switch (role.part) {
    case TensorPart::InputNorm:
      return {layer.inputNorm, event};
    case TensorPart::Wq:
      return {layer.qkv, event};
    case TensorPart::Wk:
      return {layer.qkv + qRows * hidden * actSize_, event};
    case TensorPart::Wv:
      return {layer.qkv + (qRows + kvRows) * hidden * actSize_, event};
    case TensorPart::Bq:
      return {layer.qkvBias, event};
    case TensorPart::Bk:
      return {layer.qkvBias + qRows * actSize_, event};
    case TensorPart::Bv:
      return {layer.qkvBias + (qRows + kvRows) * actSize_, event};
    case TensorPart::Wo:
      return {layer.wo, event};
    case TensorPart::PostNorm:
      return {layer.postNorm, event};
    case TensorPart::WGate:
      return {layer.gateUp, event};
    case TensorPart::WUp:
      return {layer.gateUp + inter * hidden * actSize_, event};
    default:
      return {layer.down, event};
  }
}

void CudaStage::bindTensor(const TensorBinding& binding) {
  const auto found = slotIndex_.find(binding.name);
  if (found == slotIndex_.end()) throwUnknownTensor(spec_, binding.name);
  Slot& slot = slots_[found->second];
  checkBinding(slot.expected, binding);
  std::lock_guard<std::mutex> lock(mutex_);
  useDevice(device_);
  releaseLandedHostBuffers();
  uint64_t elements = 1;
  for (int64_t d : slot.expected.shape) elements *= static_cast<uint64_t>(d);
  const Destination destination = destinationFor(binding.name);
  const uint64_t sourceBytes = elements * dtypeSize(binding.dtype);
  uint8_t* landing = destination.data;
  if (binding.dtype != act_) {
    if (convertStaging_.bytes() < sourceBytes) {
      check(cudaStreamSynchronize(copy_), "cudaStreamSynchronize (copy)");
      convertStaging_ = DeviceBuffer(sourceBytes, "dtype conversion staging", copy_);
    }
    landing = convertStaging_.data();
  }
  const uint8_t* source = binding.buffer->data() + binding.offset;
  for (uint64_t done = 0; done < sourceBytes; done += kCopyChunkBytes) {
    const uint64_t piece = std::min(kCopyChunkBytes, sourceBytes - done);
    check(cudaMemcpyAsync(landing + done, source + done, piece, cudaMemcpyHostToDevice, copy_),
          "cudaMemcpyAsync (bind tensor)");
  }
  if (binding.dtype != act_) {
    check(launchConvert(landing, binding.dtype, destination.data, act_, static_cast<int64_t>(elements), copy_),
          "convert kernel (bind tensor)");
  }
  check(cudaEventRecord(ready_[destination.event], copy_), "cudaEventRecord (layer ready)");
  copiesInFlight_.push_back(binding.buffer);
  slot.bound = true;
}

void CudaStage::releaseLandedHostBuffers() {
  if (copiesInFlight_.empty()) return;
  const cudaError_t status = cudaStreamQuery(copy_);
  if (status == cudaErrorNotReady) return;
  check(status, "cudaStreamQuery (copy)");
  copiesInFlight_.clear();
}

std::vector<std::string> CudaStage::missingTensors() const {
  std::vector<std::string> missing;
  for (const Slot& slot : slots_) {
    if (!slot.bound) missing.push_back(slot.expected.name);
  }
  return missing;
}

std::vector<float> CudaStage::forward(const ForwardRequest& request) {
  return std::move(forwardBatch({request}).front());
}

std::vector<std::vector<CudaStage::Segment>> CudaStage::planPasses(const std::vector<ForwardRequest>& requests) const {
  std::vector<std::vector<Segment>> passes(1);
  int64_t passTokens = 0;
  for (size_t r = 0; r < requests.size(); ++r) {
    const int64_t total = requestTokenCount(spec_, requests[r]);
    for (int64_t offset = 0; offset < total; offset += kMaxPassTokens) {
      const int64_t count = std::min(kMaxPassTokens, total - offset);
      if (passTokens + count > kMaxPassTokens) {
        passes.emplace_back();
        passTokens = 0;
      }
      passes.back().push_back({r, offset, count});
      passTokens += count;
    }
  }
  return passes;
}

std::vector<std::vector<float>> CudaStage::forwardBatch(const std::vector<ForwardRequest>& requests) {
  std::set<int64_t> distinct;
  for (const ForwardRequest& request : requests) {
    checkForwardRequest(spec_, request);
    if (!distinct.insert(request.sequence).second) {
      throw InvalidArgumentError("sequence " + std::to_string(request.sequence) + " appears twice in one batch");
    }
  }
  const std::vector<std::string> missing = missingTensors();
  if (!missing.empty()) {
    throw InvalidArgumentError("the stage still lacks " + std::to_string(missing.size()) + " tensor(s), first " +
                               missing.front() + "; bind them before forward");
  }
  // Inputs over links are taken (once landed) before the stage is locked: they may still be on
  // their way.
  LinkIO links;
  links.arrivals.resize(requests.size());
  links.sends.resize(requests.size());
  for (size_t r = 0; r < requests.size(); ++r) {
    const ForwardRequest& request = requests[r];
    if (!request.inputLink) continue;
    links.arrivals[r] = ncclLinkOf(request.inputLink)
                            .take(request.inputTag, request.inputTokens * spec_.hiddenSize, kLinkArrivalTimeoutSeconds);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  useDevice(device_);
  freeReleasedSequences();
  for (const ForwardRequest& request : requests) {
    const auto found = sequences_.find(request.sequence);
    const int64_t cached = found == sequences_.end() ? 0 : found->second.length;
    if (request.position > cached) {
      throw InvalidArgumentError("sequence " + std::to_string(request.sequence) + " has " + std::to_string(cached) +
                                 " cached position(s); a forward cannot start at position " +
                                 std::to_string(request.position));
    }
  }
  std::vector<std::vector<float>> outputs(requests.size());
  try {
    bool linked = false;
    for (size_t r = 0; r < requests.size(); ++r) {
      linked = linked || requests[r].inputLink || requests[r].outputLink;
      if (!requests[r].outputLink) continue;
      const uint64_t bytes = static_cast<uint64_t>(requestTokenCount(spec_, requests[r]) * spec_.hiddenSize) * sizeof(float);
      links.sends[r] = DeviceBuffer(bytes, "activation for the next stage", compute_);
    }
    for (const std::vector<Segment>& pass : planPasses(requests)) runPass(requests, pass, links, outputs);
    // The passes must be done before this returns (the arrivals' memory is freed on return)
    // and before a send takes its rows: a link that refuses one frees them at once.
    if (linked) check(cudaStreamSynchronize(compute_), "forward (over links)");
    for (size_t r = 0; r < requests.size(); ++r) {
      if (!requests[r].outputLink) continue;
      cudaEvent_t ready = nullptr;
      check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreate (activation)");
      const cudaError_t recorded = cudaEventRecord(ready, compute_);
      if (recorded != cudaSuccess) cudaEventDestroy(ready);
      check(recorded, "cudaEventRecord (activation)");
      const auto floats = static_cast<int64_t>(links.sends[r].bytes() / sizeof(float));
      ncclLinkOf(requests[r].outputLink).send(requests[r].outputTag, std::move(links.sends[r]), floats, ready);
    }
  } catch (...) {
    cudaStreamSynchronize(compute_);
    cudaGetLastError();
    freeReleasedSequences();
    throw;
  }
  releaseLandedHostBuffers();
  freeReleasedSequences();
  return outputs;
}

void CudaStage::ensureScratch(uint64_t bytes) {
  if (scratch_.bytes() >= bytes) return;
  check(cudaStreamSynchronize(compute_), "cudaStreamSynchronize (compute)");
  scratch_ = DeviceBuffer();
  scratch_ = DeviceBuffer(bytes + bytes / 4, "forward scratch", compute_);
  scratchBytes_ = scratch_.bytes();
}

void CudaStage::ensureCapacity(Sequence& sequence, int64_t positions) {
  if (positions <= sequence.capacity) return;
  int64_t capacity = std::max(kMinCapacity, sequence.capacity);
  while (capacity < positions) capacity *= 2;
  capacity = std::min(capacity, spec_.maxContext);
  const uint64_t rowBytes = static_cast<uint64_t>(spec_.numKeyValueHeads * spec_.headDim) * actSize_;
  const uint64_t planeBytes = static_cast<uint64_t>(capacity) * rowBytes;
  DeviceBuffer grown(planeBytes * 2 * layers_.size(), "KV cache", compute_);
  const uint64_t oldPlaneBytes = static_cast<uint64_t>(sequence.capacity) * rowBytes;
  const uint64_t keptBytes = static_cast<uint64_t>(sequence.length) * rowBytes;
  for (size_t plane = 0; keptBytes > 0 && plane < 2 * layers_.size(); ++plane) {
    check(cudaMemcpyAsync(grown.data() + plane * planeBytes, sequence.cache.data() + plane * oldPlaneBytes, keptBytes,
                          cudaMemcpyDeviceToDevice, compute_),
          "cudaMemcpyAsync (grow KV cache)");
  }
  check(cudaStreamSynchronize(compute_), "cudaStreamSynchronize (grow KV cache)");
  kvBytes_ += grown.bytes();
  kvBytes_ -= sequence.cache.bytes();
  sequence.cache = std::move(grown);
  sequence.capacity = capacity;
}

uint8_t* CudaStage::keysOf(const Sequence& sequence, size_t layer) const {
  const uint64_t planeBytes =
      static_cast<uint64_t>(sequence.capacity * spec_.numKeyValueHeads * spec_.headDim) * actSize_;
  return sequence.cache.data() + (2 * layer) * planeBytes;
}

uint8_t* CudaStage::valuesOf(const Sequence& sequence, size_t layer) const {
  return keysOf(sequence, layer) +
         static_cast<uint64_t>(sequence.capacity * spec_.numKeyValueHeads * spec_.headDim) * actSize_;
}

void CudaStage::linear(const void* in, const void* weight, int64_t rows, int64_t inFeatures, int64_t outFeatures,
                       void* out, bool outFp32, bool accumulate) {
  if (outFp32 && rows <= kMaxGemvRows) {
    const cudaError_t status =
        launchGemv(weight, in, act_, rows, inFeatures, outFeatures, static_cast<float*>(out), accumulate, compute_);
    if (status != cudaErrorNotSupported) {
      check(status, "matrix-vector kernel (linear)");
      return;
    }
  }
  const float alpha = 1.0f;
  const float beta = accumulate ? 1.0f : 0.0f;
  const cudaDataType type = cudaTypeOf(act_);
  check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(outFeatures), static_cast<int>(rows),
                     static_cast<int>(inFeatures), &alpha, weight, type, static_cast<int>(inFeatures), in, type,
                     static_cast<int>(inFeatures), &beta, out, outFp32 ? CUDA_R_32F : type,
                     static_cast<int>(outFeatures), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx (linear)");
}

void CudaStage::attention(const PassBuffers& buffers, const Segment& segment, int64_t position, Sequence& sequence,
                          size_t layer, int64_t row, const int64_t* positionOnDevice) {
  const int64_t heads = spec_.numAttentionHeads;
  const int64_t kvHeads = spec_.numKeyValueHeads;
  const int64_t headDim = spec_.headDim;
  const int64_t group = heads / kvHeads;
  const int64_t count = segment.count;
  const int64_t keys = position + count;
  const cudaDataType type = cudaTypeOf(act_);
  const float scale = 1.0f / std::sqrt(static_cast<float>(headDim));
  const float zero = 0.0f;
  const float one = 1.0f;
  const uint8_t* segmentQ = buffers.q16 + static_cast<uint64_t>(row * heads * headDim) * actSize_;
  uint8_t* segmentOut = buffers.attnOut + static_cast<uint64_t>(row * heads * headDim) * actSize_;
  if (count == 1) {
    const int64_t maxKeys = positionOnDevice != nullptr ? sequence.capacity : keys;
    const cudaError_t status =
        launchDecodeAttention(segmentQ, keysOf(sequence, layer), valuesOf(sequence, layer), heads, kvHeads, headDim,
                              keys, positionOnDevice, maxKeys, segmentOut, act_, compute_);
    if (status != cudaErrorNotSupported) {
      check(status, "decode attention kernel");
      return;
    }
  }
  // Query head h = g * group + j reads kv head g: one strided batch over g per j.
  for (int64_t j = 0; j < group; ++j) {
    check(cublasGemmStridedBatchedEx(
              blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(keys), static_cast<int>(count),
              static_cast<int>(headDim), &scale, keysOf(sequence, layer), type, static_cast<int>(kvHeads * headDim),
              headDim, segmentQ + static_cast<uint64_t>(j * headDim) * actSize_, type,
              static_cast<int>(heads * headDim), group * headDim, &zero, buffers.scores + j * count * keys, CUDA_R_32F,
              static_cast<int>(keys), group * count * keys, static_cast<int>(kvHeads), CUBLAS_COMPUTE_32F,
              CUBLAS_GEMM_DEFAULT),
          "cublasGemmStridedBatchedEx (attention scores)");
  }
  check(launchCausalSoftmax(buffers.scores, heads, count, keys, position, buffers.probabilities, act_, compute_),
        "softmax kernel");
  for (int64_t j = 0; j < group; ++j) {
    check(cublasGemmStridedBatchedEx(
              blas_, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(headDim), static_cast<int>(count),
              static_cast<int>(keys), &one, valuesOf(sequence, layer), type, static_cast<int>(kvHeads * headDim),
              headDim, buffers.probabilities + static_cast<uint64_t>(j * count * keys) * actSize_, type,
              static_cast<int>(keys), group * count * keys, &zero,
              segmentOut + static_cast<uint64_t>(j * headDim) * actSize_, type, static_cast<int>(heads * headDim),
              group * headDim, static_cast<int>(kvHeads), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmStridedBatchedEx (attention values)");
  }
}

CudaStage::PassBuffers CudaStage::carvePass(int64_t tokens, int64_t segmentCount, int64_t maxAttention) {
  const int64_t hidden = spec_.hiddenSize;
  const int64_t heads = spec_.numAttentionHeads;
  const int64_t qkvWidth = (heads + 2 * spec_.numKeyValueHeads) * spec_.headDim;
  const int64_t inter = spec_.intermediateSize;
  const auto act = [this](int64_t elements) { return static_cast<uint64_t>(elements) * actSize_; };
  const auto floats = [](int64_t elements) { return static_cast<uint64_t>(elements) * sizeof(float); };
  // The attention scratch, whose size changes every step, comes last: every other pointer
  // depends only on (tokens, segmentCount), so a captured decode graph stays valid.
  const uint64_t sizes[] = {
      floats(tokens),                               // tokenIds
      floats(tokens * hidden),                      // x
      act(tokens * hidden),                         // normed
      floats(tokens * qkvWidth),                    // qkv
      act(tokens * heads * spec_.headDim),          // q16
      act(tokens * heads * spec_.headDim),          // attnOut
      floats(tokens * 2 * inter),                   // gateUp
      act(tokens * inter),                          // activated
      floats(segmentCount * hidden),                // lastRows
      act(segmentCount * hidden),                   // lastNormed
      floats(segmentCount * spec_.vocabSize),       // logits
      floats(heads * maxAttention),                 // scores
      act(heads * maxAttention),                    // probabilities
  };
  uint64_t needed = 0;
  for (uint64_t size : sizes) needed += (size + kScratchAlignment - 1) / kScratchAlignment * kScratchAlignment;
  ensureScratch(needed);
  ScratchCarver carve(scratch_.data());
  PassBuffers b;
  b.tokenIds = reinterpret_cast<int32_t*>(carve.take(sizes[0]));
  b.x = reinterpret_cast<float*>(carve.take(sizes[1]));
  b.normed = carve.take(sizes[2]);
  b.qkv = reinterpret_cast<float*>(carve.take(sizes[3]));
  b.q16 = carve.take(sizes[4]);
  b.attnOut = carve.take(sizes[5]);
  b.gateUp = reinterpret_cast<float*>(carve.take(sizes[6]));
  b.activated = carve.take(sizes[7]);
  b.lastRows = reinterpret_cast<float*>(carve.take(sizes[8]));
  b.lastNormed = carve.take(sizes[9]);
  b.logits = reinterpret_cast<float*>(carve.take(sizes[10]));
  b.scores = reinterpret_cast<float*>(carve.take(sizes[11]));
  b.probabilities = carve.take(sizes[12]);
  return b;
}

void CudaStage::enqueuePass(const std::vector<ForwardRequest>& requests, const std::vector<Segment>& segments,
                            const PassBuffers& b, int64_t tokens, const int64_t* positionOnDevice, bool waitForLayers) {
  const int64_t hidden = spec_.hiddenSize;
  const int64_t heads = spec_.numAttentionHeads;
  const int64_t kvHeads = spec_.numKeyValueHeads;
  const int64_t headDim = spec_.headDim;
  const int64_t inter = spec_.intermediateSize;
  const int64_t qkvWidth = (heads + 2 * kvHeads) * headDim;
  const int64_t segmentCount = static_cast<int64_t>(segments.size());
  const auto wait = [this, waitForLayers](size_t event, const char* what) {
    if (waitForLayers) check(cudaStreamWaitEvent(compute_, ready_[event], 0), what);
  };
  if (spec_.hasEmbeddings) {
    wait(0, "cudaStreamWaitEvent (embeddings)");
    check(launchEmbed(b.tokenIds, tokens, embed_, act_, hidden, b.x, compute_), "embedding kernel");
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    wait(l + 1, "cudaStreamWaitEvent (layer)");
    check(launchRmsNorm(b.x, layer.inputNorm, act_, tokens, hidden, spec_.rmsNormEps, b.normed, compute_),
          "input norm kernel");
    linear(b.normed, layer.qkv, tokens, hidden, qkvWidth, b.qkv, true, false);
    if (spec_.attentionBias) {
      check(launchAddBias(b.qkv, layer.qkvBias, act_, tokens, qkvWidth, compute_), "bias kernel");
    }
    int64_t row = 0;
    for (const Segment& segment : segments) {
      const ForwardRequest& request = requests[segment.request];
      const int64_t position = request.position + segment.offset;
      Sequence& sequence = sequences_[request.sequence];
      check(launchRopeAndCache(b.qkv + row * qkvWidth, segment.count, heads, kvHeads, headDim, position,
                               positionOnDevice, reinterpret_cast<const float*>(invFreq_.data()),
                               b.q16 + static_cast<uint64_t>(row * heads * headDim) * actSize_, keysOf(sequence, l),
                               valuesOf(sequence, l), act_, compute_),
            "rotary embedding kernel");
      attention(b, segment, position, sequence, l, row, positionOnDevice);
      row += segment.count;
    }
    linear(b.attnOut, layer.wo, tokens, heads * headDim, hidden, b.x, true, true);
    check(launchRmsNorm(b.x, layer.postNorm, act_, tokens, hidden, spec_.rmsNormEps, b.normed, compute_),
          "post-attention norm kernel");
    linear(b.normed, layer.gateUp, tokens, hidden, 2 * inter, b.gateUp, true, false);
    check(launchSwiGlu(b.gateUp, tokens, inter, b.activated, act_, compute_), "SwiGLU kernel");
    linear(b.activated, layer.down, tokens, inter, hidden, b.x, true, true);
  }
  if (!spec_.hasHead) return;
  int64_t row = 0;
  for (int64_t s = 0; s < segmentCount; ++s) {
    row += segments[static_cast<size_t>(s)].count;
    check(cudaMemcpyAsync(b.lastRows + s * hidden, b.x + (row - 1) * hidden, hidden * sizeof(float),
                          cudaMemcpyDeviceToDevice, compute_),
          "cudaMemcpyAsync (last token)");
  }
  wait(ready_.size() - 1, "cudaStreamWaitEvent (head)");
  if (spec_.tieWordEmbeddings) wait(0, "cudaStreamWaitEvent (tied head)");
  check(launchRmsNorm(b.lastRows, norm_, act_, segmentCount, hidden, spec_.rmsNormEps, b.lastNormed, compute_),
        "final norm kernel");
  linear(b.lastNormed, spec_.tieWordEmbeddings ? embed_ : lmHead_, segmentCount, hidden, spec_.vocabSize, b.logits,
         true, false);
}

bool CudaStage::usesDecodeKernel(int64_t count, int64_t keys) const {
  return count == 1 && keys <= kMaxDecodeKeys && spec_.headDim <= 256;
}

bool CudaStage::copiesLanded() {
  releaseLandedHostBuffers();
  if (!copiesInFlight_.empty()) return false;
  const cudaError_t status = cudaStreamQuery(copy_);
  if (status == cudaErrorNotReady) return false;
  check(status, "cudaStreamQuery (copy)");
  return true;
}

void CudaStage::launchDecodeGraph(const ForwardRequest& request, Sequence& sequence, const PassBuffers& buffers) {
  DecodeGraph& graph = decodeGraphs_[request.sequence];
  if (graph.exec == nullptr || graph.cache != sequence.cache.data() || graph.capacity != sequence.capacity ||
      graph.scratch != scratch_.data()) {
    graph = DecodeGraph{};
    cudaGraph_t captured = nullptr;
    check(cudaStreamBeginCapture(compute_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    try {
      enqueuePass({request}, {Segment{0, 0, 1}}, buffers, 1,
                  reinterpret_cast<const int64_t*>(decodePosition_.data()), false);
    } catch (...) {
      cudaStreamEndCapture(compute_, &captured);
      if (captured != nullptr) cudaGraphDestroy(captured);
      cudaGetLastError();
      throw;
    }
    check(cudaStreamEndCapture(compute_, &captured), "cudaStreamEndCapture");
    const cudaError_t status = cudaGraphInstantiate(&graph.exec, captured, 0);
    cudaGraphDestroy(captured);
    check(status, "cudaGraphInstantiate");
    graph.cache = sequence.cache.data();
    graph.capacity = sequence.capacity;
    graph.scratch = scratch_.data();
  }
  check(cudaGraphLaunch(graph.exec, compute_), "cudaGraphLaunch");
}

void CudaStage::runPass(const std::vector<ForwardRequest>& requests, const std::vector<Segment>& segments,
                        LinkIO& links, std::vector<std::vector<float>>& outputs) {
  const int64_t hidden = spec_.hiddenSize;
  const uint64_t rowBytes = static_cast<uint64_t>(hidden) * sizeof(float);
  const int64_t segmentCount = static_cast<int64_t>(segments.size());
  int64_t tokens = 0;
  int64_t maxAttention = 0;
  for (const Segment& segment : segments) {
    const ForwardRequest& request = requests[segment.request];
    const int64_t end = request.position + segment.offset + segment.count;
    ensureCapacity(sequences_[request.sequence], end);
    tokens += segment.count;
    if (!usesDecodeKernel(segment.count, end)) maxAttention = std::max(maxAttention, segment.count * end);
  }
  const PassBuffers buffers = carvePass(tokens, segmentCount, maxAttention);

  if (spec_.hasEmbeddings) {
    std::vector<int32_t> ids;
    ids.reserve(static_cast<size_t>(tokens));
    for (const Segment& segment : segments) {
      const std::vector<int32_t>& all = requests[segment.request].tokens;
      ids.insert(ids.end(), all.begin() + segment.offset, all.begin() + segment.offset + segment.count);
    }
    check(cudaMemcpyAsync(buffers.tokenIds, ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                          compute_),
          "cudaMemcpyAsync (tokens)");
  } else {
    int64_t row = 0;
    for (const Segment& segment : segments) {
      const LinkArrival* arrival = links.arrivals[segment.request].get();
      if (arrival != nullptr) {
        check(cudaMemcpyAsync(buffers.x + row * hidden, arrival->rows.data() + segment.offset * rowBytes,
                              segment.count * rowBytes, cudaMemcpyDeviceToDevice, compute_),
              "cudaMemcpyAsync (hidden states from the link)");
      } else {
        const float* rows = requests[segment.request].hidden.data() + segment.offset * hidden;
        check(cudaMemcpyAsync(buffers.x + row * hidden, rows, segment.count * rowBytes, cudaMemcpyHostToDevice,
                              compute_),
              "cudaMemcpyAsync (hidden states)");
      }
      row += segment.count;
    }
  }

  // A single decode step of one sequence whose weights have all landed replays a captured
  // CUDA graph: hundreds of kernel launches become one, which is what bounds batch-1 decode.
  const Segment& first = segments.front();
  const ForwardRequest& firstRequest = requests[first.request];
  Sequence& firstSequence = sequences_[firstRequest.sequence];
  if (segmentCount == 1 && usesDecodeKernel(first.count, firstSequence.capacity) && copiesLanded()) {
    const int64_t position = firstRequest.position + first.offset;
    check(cudaMemcpyAsync(decodePosition_.data(), &position, sizeof(position), cudaMemcpyHostToDevice, compute_),
          "cudaMemcpyAsync (position)");
    launchDecodeGraph(firstRequest, firstSequence, buffers);
  } else {
    enqueuePass(requests, segments, buffers, tokens, nullptr, true);
  }

  if (spec_.hasHead) {
    std::vector<float> host(static_cast<size_t>(segmentCount * spec_.vocabSize));
    check(cudaMemcpyAsync(host.data(), buffers.logits, host.size() * sizeof(float), cudaMemcpyDeviceToHost, compute_),
          "cudaMemcpyAsync (logits)");
    check(cudaStreamSynchronize(compute_), "forward (logits)");
    for (int64_t s = 0; s < segmentCount; ++s) {
      const float* begin = host.data() + s * spec_.vocabSize;
      outputs[segments[static_cast<size_t>(s)].request].assign(begin, begin + spec_.vocabSize);
    }
  } else {
    // Rows bound for a link gather on the device; the others come back to the host.
    bool toHost = false;
    int64_t row = 0;
    for (const Segment& segment : segments) {
      DeviceBuffer& send = links.sends[segment.request];
      if (send.data() != nullptr) {
        check(cudaMemcpyAsync(send.data() + segment.offset * rowBytes, buffers.x + row * hidden,
                              segment.count * rowBytes, cudaMemcpyDeviceToDevice, compute_),
              "cudaMemcpyAsync (hidden states for the link)");
      } else {
        toHost = true;
      }
      row += segment.count;
    }
    if (toHost) {
      std::vector<float> host(static_cast<size_t>(tokens * hidden));
      check(cudaMemcpyAsync(host.data(), buffers.x, host.size() * sizeof(float), cudaMemcpyDeviceToHost, compute_),
            "cudaMemcpyAsync (hidden states out)");
      check(cudaStreamSynchronize(compute_), "forward (hidden states)");
      row = 0;
      for (const Segment& segment : segments) {
        if (links.sends[segment.request].data() == nullptr) {
          std::vector<float>& out = outputs[segment.request];
          out.insert(out.end(), host.begin() + row * hidden, host.begin() + (row + segment.count) * hidden);
        }
        row += segment.count;
      }
    }
  }
  for (const Segment& segment : segments) {
    const ForwardRequest& request = requests[segment.request];
    sequences_[request.sequence].length = request.position + segment.offset + segment.count;
  }
}

void CudaStage::freeSequence(int64_t sequence) {
  decodeGraphs_.erase(sequence);
  const auto found = sequences_.find(sequence);
  if (found == sequences_.end()) return;
  kvBytes_ -= found->second.cache.bytes();
  sequences_.erase(found);
}

void CudaStage::freeReleasedSequences() {
  std::vector<int64_t> released;
  {
    std::lock_guard<std::mutex> lock(releasedMutex_);
    released.swap(released_);
  }
  for (int64_t sequence : released) freeSequence(sequence);
}

void CudaStage::releaseSequence(int64_t sequence) {
  std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock()) {
    std::lock_guard<std::mutex> releasedLock(releasedMutex_);
    released_.push_back(sequence);
    return;
  }
  useDevice(device_);
  freeSequence(sequence);
}

std::unique_ptr<Stage> CudaStage::cloneTo(int64_t device) {
  StageSpec spec = spec_;
  spec.device = device;
  auto clone = std::make_unique<CudaStage>(spec);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    useDevice(device_);
    check(cudaStreamSynchronize(copy_), "cudaStreamSynchronize (copy, before a move)");
    copiesInFlight_.clear();
  }
  useDevice(clone->device_);
  check(cudaMemcpyPeerAsync(clone->weights_.data(), clone->device_, weights_.data(), device_, weights_.bytes(),
                            clone->copy_),
        "cudaMemcpyPeerAsync (move)");
  for (cudaEvent_t event : clone->ready_) check(cudaEventRecord(event, clone->copy_), "cudaEventRecord (moved)");
  for (Slot& slot : clone->slots_) slot.bound = true;
  return clone;
}

void CudaStage::warmUp(const std::vector<int64_t>& prefillTokens) {
  const int64_t prefill = std::min<int64_t>(32, spec_.maxContext - 1);
  if (prefill < 1) return;
  // A prompt longer than a pass runs as full passes and a remainder: those are its shapes.
  std::set<int64_t> prefills{prefill};
  for (const int64_t tokens : prefillTokens) {
    const int64_t fitting = std::min(tokens, spec_.maxContext - 1);
    if (fitting >= 1) prefills.insert(fitting % kMaxPassTokens == 0 ? kMaxPassTokens : fitting % kMaxPassTokens);
    if (fitting > kMaxPassTokens) prefills.insert(kMaxPassTokens);
  }
  std::vector<int64_t> counts(prefills.begin(), prefills.end());
  counts.push_back(1);  // the decode step, at position `prefill`
  const int64_t sequence = std::numeric_limits<int64_t>::min();  // an id no caller uses
  std::lock_guard<std::mutex> lock(mutex_);
  useDevice(device_);
  LinkIO links;
  links.arrivals.resize(1);
  links.sends.resize(1);
  std::vector<std::vector<float>> outputs(1);
  try {
    for (size_t i = 0; i < counts.size(); ++i) {
      const int64_t count = counts[i];
      const bool decode = i + 1 == counts.size();
      if (!decode && i > 0) {
        // Each prefill starts a fresh sequence.
        check(cudaStreamSynchronize(compute_), "warm-up");
        freeSequence(sequence);
      }
      ForwardRequest request;
      request.sequence = sequence;
      request.position = decode ? prefill : 0;
      if (spec_.hasEmbeddings) {
        request.tokens.assign(static_cast<size_t>(count), 0);
      } else {
        request.hidden.assign(static_cast<size_t>(count * spec_.hiddenSize), 0.0f);
      }
      outputs[0].clear();
      runPass({request}, {Segment{0, 0, count}}, links, outputs);
    }
    check(cudaStreamSynchronize(compute_), "warm-up");
  } catch (...) {
    cudaStreamSynchronize(compute_);
    cudaGetLastError();
    freeSequence(sequence);
    throw;
  }
  freeSequence(sequence);
}

void CudaStage::waitForCopies() {
  std::lock_guard<std::mutex> lock(mutex_);
  useDevice(device_);
  check(cudaStreamSynchronize(copy_), "cudaStreamSynchronize (copy)");
  copiesInFlight_.clear();
}

uint64_t CudaStage::deviceBytes() const { return weights_.bytes() + kvBytes_ + scratchBytes_; }

}  // namespace paraserve::cuda

#endif  // PARASERVE_WITH_CUDA
