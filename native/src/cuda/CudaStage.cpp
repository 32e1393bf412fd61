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
// Host-to-device copies are issued in pieces of this size: large enough to run at the
// PCIe limit, small enough that the copy stream interleaves with other stages' copies.
constexpr uint64_t kCopyChunkBytes = 16ull << 20;
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

DeviceBuffer::DeviceBuffer(uint64_t bytes, const char* what) : bytes_(bytes) {
  if (bytes == 0) return;
  void* data = nullptr;
  const cudaError_t status = cudaMalloc(&data, static_cast<size_t>(bytes));
  if (status != cudaSuccess) {
    cudaGetLastError();
    size_t freeBytes = 0;
    size_t totalBytes = 0;
    cudaMemGetInfo(&freeBytes, &totalBytes);
    cudaGetLastError();
    const std::string message = std::string("cudaMalloc of ") + std::to_string(bytes) + " bytes for " + what +
                                " failed: " + cudaGetErrorString(status) + " (" + std::to_string(freeBytes) +
                                " of " + std::to_string(totalBytes) + " bytes free on the device)";
    if (status == cudaErrorMemoryAllocation) throw OutOfMemoryError(message);
    throw CudaError(message);
  }
  data_ = static_cast<uint8_t*>(data);
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ == nullptr) return;
  const cudaError_t status = cudaFree(data_);
  if (status != cudaSuccess) std::fprintf(stderr, "paraserve native: cudaFree failed: %s\n", cudaGetErrorString(status));
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
  const auto weights = [this](int64_t elements, const char* what) {
    weightBytes_ += static_cast<uint64_t>(elements) * actSize_;
    return DeviceBuffer(static_cast<uint64_t>(elements) * actSize_, what);
  };
  try {
    check(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking), "cudaStreamCreate (compute)");
    check(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking), "cudaStreamCreate (copy)");
    check(cublasCreate(&blas_), "cublasCreate");
    check(cublasSetStream(blas_, compute_), "cublasSetStream");
    ready_.resize(static_cast<size_t>(layerCount) + 2, nullptr);
    for (cudaEvent_t& event : ready_) check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");

    const std::vector<float> invFreq = ropeInverseFrequencies(spec.headDim, spec.ropeTheta, spec.rope);
    invFreq_ = DeviceBuffer(invFreq.size() * sizeof(float), "rotary frequencies");
    check(cudaMemcpy(invFreq_.data(), invFreq.data(), invFreq.size() * sizeof(float), cudaMemcpyHostToDevice),
          "cudaMemcpy (rotary frequencies)");

    if (spec.hasEmbeddings || (spec.hasHead && spec.tieWordEmbeddings)) {
      embed_ = weights(spec.vocabSize * hidden, "embeddings");
    }
    for (int64_t i = 0; i < layerCount; ++i) {
      Layer layer;
      layer.inputNorm = weights(hidden, "input norm");
      layer.qkv = weights(qkvRows * hidden, "q/k/v projections");
      if (spec.attentionBias) layer.qkvBias = weights(qkvRows, "q/k/v biases");
      layer.wo = weights(hidden * spec.numAttentionHeads * spec.headDim, "o projection");
      layer.postNorm = weights(hidden, "post-attention norm");
      layer.gateUp = weights(2 * spec.intermediateSize * hidden, "gate/up projections");
      layer.down = weights(hidden * spec.intermediateSize, "down projection");
      layers_.push_back(std::move(layer));
    }
    if (spec.hasHead) {
      norm_ = weights(hidden, "final norm");
      if (!spec.tieWordEmbeddings) lmHead_ = weights(spec.vocabSize * hidden, "LM head");
    }
  } catch (...) {
    layers_.clear();
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
  sequences_.clear();
  layers_.clear();
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
      return {embed_.data(), 0};
    case TensorPart::FinalNorm:
      return {norm_.data(), ready_.size() - 1};
    case TensorPart::LmHead:
      return {lmHead_.data(), ready_.size() - 1};
    default:
      break;
  }
  Layer& layer = layers_[static_cast<size_t>(role.layer)];
  const size_t event = static_cast<size_t>(role.layer) + 1;
  switch (role.part) {
    case TensorPart::InputNorm:
      return {layer.inputNorm.data(), event};
    case TensorPart::Wq:
      return {layer.qkv.data(), event};
    case TensorPart::Wk:
      return {layer.qkv.data() + qRows * hidden * actSize_, event};
    case TensorPart::Wv:
      return {layer.qkv.data() + (qRows + kvRows) * hidden * actSize_, event};
    case TensorPart::Bq:
      return {layer.qkvBias.data(), event};
    case TensorPart::Bk:
      return {layer.qkvBias.data() + qRows * actSize_, event};
    case TensorPart::Bv:
      return {layer.qkvBias.data() + (qRows + kvRows) * actSize_, event};
    case TensorPart::Wo:
      return {layer.wo.data(), event};
    case TensorPart::PostNorm:
      return {layer.postNorm.data(), event};
    case TensorPart::WGate:
      return {layer.gateUp.data(), event};
    case TensorPart::WUp:
      return {layer.gateUp.data() + inter * hidden * actSize_, event};
    default:
      return {layer.down.data(), event};
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
      convertStaging_ = DeviceBuffer(sourceBytes, "dtype conversion staging");
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
    for (const std::vector<Segment>& pass : planPasses(requests)) runPass(requests, pass, outputs);
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
  scratch_ = DeviceBuffer(bytes + bytes / 4, "forward scratch");
  scratchBytes_ = scratch_.bytes();
}

void CudaStage::ensureCapacity(Sequence& sequence, int64_t positions) {
  if (positions <= sequence.capacity) return;
  int64_t capacity = std::max(kMinCapacity, sequence.capacity);
  while (capacity < positions) capacity *= 2;
  capacity = std::min(capacity, spec_.maxContext);
  const uint64_t rowBytes = static_cast<uint64_t>(spec_.numKeyValueHeads * spec_.headDim) * actSize_;
  const uint64_t planeBytes = static_cast<uint64_t>(capacity) * rowBytes;
  DeviceBuffer grown(planeBytes * 2 * layers_.size(), "KV cache");
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
  const float alpha = 1.0f;
  const float beta = accumulate ? 1.0f : 0.0f;
  const cudaDataType type = cudaTypeOf(act_);
  check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(outFeatures), static_cast<int>(rows),
                     static_cast<int>(inFeatures), &alpha, weight, type, static_cast<int>(inFeatures), in, type,
                     static_cast<int>(inFeatures), &beta, out, outFp32 ? CUDA_R_32F : type,
                     static_cast<int>(outFeatures), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx (linear)");
}

void CudaStage::attention(const Segment& segment, int64_t position, Sequence& sequence, size_t layer, int64_t row,
                          uint8_t* q16, float* scores, uint8_t* probabilities, uint8_t* attnOut) {
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
  const uint8_t* segmentQ = q16 + static_cast<uint64_t>(row * heads * headDim) * actSize_;
  uint8_t* segmentOut = attnOut + static_cast<uint64_t>(row * heads * headDim) * actSize_;
  // Query head h = g * group + j reads kv head g: one strided batch over g per j.
  for (int64_t j = 0; j < group; ++j) {
    check(cublasGemmStridedBatchedEx(
              blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(keys), static_cast<int>(count),
              static_cast<int>(headDim), &scale, keysOf(sequence, layer), type, static_cast<int>(kvHeads * headDim),
              headDim, segmentQ + static_cast<uint64_t>(j * headDim) * actSize_, type,
              static_cast<int>(heads * headDim), group * headDim, &zero, scores + j * count * keys, CUDA_R_32F,
              static_cast<int>(keys), group * count * keys, static_cast<int>(kvHeads), CUBLAS_COMPUTE_32F,
              CUBLAS_GEMM_DEFAULT),
          "cublasGemmStridedBatchedEx (attention scores)");
  }
  check(launchCausalSoftmax(scores, heads, count, keys, position, probabilities, act_, compute_),
        "softmax kernel");
  for (int64_t j = 0; j < group; ++j) {
    check(cublasGemmStridedBatchedEx(
              blas_, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(headDim), static_cast<int>(count),
              static_cast<int>(keys), &one, valuesOf(sequence, layer), type, static_cast<int>(kvHeads * headDim),
              headDim, probabilities + static_cast<uint64_t>(j * count * keys) * actSize_, type,
              static_cast<int>(keys), group * count * keys, &zero,
              segmentOut + static_cast<uint64_t>(j * headDim) * actSize_, type, static_cast<int>(heads * headDim),
              group * headDim, static_cast<int>(kvHeads), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmStridedBatchedEx (attention values)");
  }
}

void CudaStage::runPass(const std::vector<ForwardRequest>& requests, const std::vector<Segment>& segments,
                        std::vector<std::vector<float>>& outputs) {
  const int64_t hidden = spec_.hiddenSize;
  const int64_t heads = spec_.numAttentionHeads;
  const int64_t kvHeads = spec_.numKeyValueHeads;
  const int64_t headDim = spec_.headDim;
  const int64_t inter = spec_.intermediateSize;
  const int64_t qkvWidth = (heads + 2 * kvHeads) * headDim;
  const int64_t segmentCount = static_cast<int64_t>(segments.size());
  int64_t tokens = 0;
  int64_t maxAttention = 0;
  for (const Segment& segment : segments) {
    const ForwardRequest& request = requests[segment.request];
    const int64_t end = request.position + segment.offset + segment.count;
    Sequence& sequence = sequences_[request.sequence];
    ensureCapacity(sequence, end);
    tokens += segment.count;
    maxAttention = std::max(maxAttention, segment.count * end);
  }

  const auto sizeOfAct = [this](int64_t elements) { return static_cast<uint64_t>(elements) * actSize_; };
  const auto sizeOfFloat = [](int64_t elements) { return static_cast<uint64_t>(elements) * sizeof(float); };
  const uint64_t needed = 16 * kScratchAlignment + sizeOfFloat(tokens) + sizeOfFloat(tokens * hidden) +
                          sizeOfAct(tokens * hidden) + sizeOfFloat(tokens * qkvWidth) +
                          2 * sizeOfAct(tokens * heads * headDim) + sizeOfFloat(heads * maxAttention) +
                          sizeOfAct(heads * maxAttention) + sizeOfFloat(tokens * 2 * inter) +
                          sizeOfAct(tokens * inter) + sizeOfFloat(segmentCount * hidden) +
                          sizeOfAct(segmentCount * hidden) + sizeOfFloat(segmentCount * spec_.vocabSize);
  ensureScratch(needed);
  ScratchCarver carve(scratch_.data());
  auto* tokenIds = reinterpret_cast<int32_t*>(carve.take(sizeOfFloat(tokens)));
  auto* x = reinterpret_cast<float*>(carve.take(sizeOfFloat(tokens * hidden)));
  uint8_t* normed = carve.take(sizeOfAct(tokens * hidden));
  auto* qkv = reinterpret_cast<float*>(carve.take(sizeOfFloat(tokens * qkvWidth)));
  uint8_t* q16 = carve.take(sizeOfAct(tokens * heads * headDim));
  uint8_t* attnOut = carve.take(sizeOfAct(tokens * heads * headDim));
  auto* scores = reinterpret_cast<float*>(carve.take(sizeOfFloat(heads * maxAttention)));
  uint8_t* probabilities = carve.take(sizeOfAct(heads * maxAttention));
  auto* gateUp = reinterpret_cast<float*>(carve.take(sizeOfFloat(tokens * 2 * inter)));
  uint8_t* activated = carve.take(sizeOfAct(tokens * inter));
  auto* lastRows = reinterpret_cast<float*>(carve.take(sizeOfFloat(segmentCount * hidden)));
  uint8_t* lastNormed = carve.take(sizeOfAct(segmentCount * hidden));
  auto* logits = reinterpret_cast<float*>(carve.take(sizeOfFloat(segmentCount * spec_.vocabSize)));

  if (spec_.hasEmbeddings) {
    std::vector<int32_t> ids;
    ids.reserve(static_cast<size_t>(tokens));
    for (const Segment& segment : segments) {
      const std::vector<int32_t>& all = requests[segment.request].tokens;
      ids.insert(ids.end(), all.begin() + segment.offset, all.begin() + segment.offset + segment.count);
    }
    check(cudaMemcpyAsync(tokenIds, ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice, compute_),
          "cudaMemcpyAsync (tokens)");
    check(cudaStreamWaitEvent(compute_, ready_.front(), 0), "cudaStreamWaitEvent (embeddings)");
    check(launchEmbed(tokenIds, tokens, embed_.data(), act_, hidden, x, compute_), "embedding kernel");
  } else {
    int64_t row = 0;
    for (const Segment& segment : segments) {
      const float* rows = requests[segment.request].hidden.data() + segment.offset * hidden;
      check(cudaMemcpyAsync(x + row * hidden, rows, sizeOfFloat(segment.count * hidden), cudaMemcpyHostToDevice,
                            compute_),
            "cudaMemcpyAsync (hidden states)");
      row += segment.count;
    }
  }

  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    check(cudaStreamWaitEvent(compute_, ready_[l + 1], 0), "cudaStreamWaitEvent (layer)");
    check(launchRmsNorm(x, layer.inputNorm.data(), act_, tokens, hidden, spec_.rmsNormEps, normed, compute_),
          "input norm kernel");
    linear(normed, layer.qkv.data(), tokens, hidden, qkvWidth, qkv, true, false);
    if (spec_.attentionBias) {
      check(launchAddBias(qkv, layer.qkvBias.data(), act_, tokens, qkvWidth, compute_), "bias kernel");
    }
    int64_t row = 0;
    for (const Segment& segment : segments) {
      const ForwardRequest& request = requests[segment.request];
      const int64_t position = request.position + segment.offset;
      Sequence& sequence = sequences_[request.sequence];
      check(launchRopeAndCache(qkv + row * qkvWidth, segment.count, heads, kvHeads, headDim, position,
                               reinterpret_cast<const float*>(invFreq_.data()),
                               q16 + sizeOfAct(row * heads * headDim), keysOf(sequence, l), valuesOf(sequence, l),
                               act_, compute_),
            "rotary embedding kernel");
      attention(segment, position, sequence, l, row, q16, scores, probabilities, attnOut);
      row += segment.count;
    }
    linear(attnOut, layer.wo.data(), tokens, heads * headDim, hidden, x, true, true);
    check(launchRmsNorm(x, layer.postNorm.data(), act_, tokens, hidden, spec_.rmsNormEps, normed, compute_),
          "post-attention norm kernel");
    linear(normed, layer.gateUp.data(), tokens, hidden, 2 * inter, gateUp, true, false);
    check(launchSwiGlu(gateUp, tokens, inter, activated, act_, compute_), "SwiGLU kernel");
    linear(activated, layer.down.data(), tokens, inter, hidden, x, true, true);
  }

  if (spec_.hasHead) {
    int64_t row = 0;
    for (int64_t s = 0; s < segmentCount; ++s) {
      row += segments[static_cast<size_t>(s)].count;
      check(cudaMemcpyAsync(lastRows + s * hidden, x + (row - 1) * hidden, sizeOfFloat(hidden),
                            cudaMemcpyDeviceToDevice, compute_),
            "cudaMemcpyAsync (last token)");
    }
    check(cudaStreamWaitEvent(compute_, ready_.back(), 0), "cudaStreamWaitEvent (head)");
    if (spec_.tieWordEmbeddings) check(cudaStreamWaitEvent(compute_, ready_.front(), 0), "cudaStreamWaitEvent (tied head)");
    check(launchRmsNorm(lastRows, norm_.data(), act_, segmentCount, hidden, spec_.rmsNormEps, lastNormed, compute_),
          "final norm kernel");
    const DeviceBuffer& head = spec_.tieWordEmbeddings ? embed_ : lmHead_;
    linear(lastNormed, head.data(), segmentCount, hidden, spec_.vocabSize, logits, true, false);
    std::vector<float> host(static_cast<size_t>(segmentCount * spec_.vocabSize));
    check(cudaMemcpyAsync(host.data(), logits, sizeOfFloat(segmentCount * spec_.vocabSize), cudaMemcpyDeviceToHost,
                          compute_),
          "cudaMemcpyAsync (logits)");
    check(cudaStreamSynchronize(compute_), "forward (logits)");
    for (int64_t s = 0; s < segmentCount; ++s) {
      const float* begin = host.data() + s * spec_.vocabSize;
      outputs[segments[static_cast<size_t>(s)].request].assign(begin, begin + spec_.vocabSize);
    }
  } else {
    std::vector<float> host(static_cast<size_t>(tokens * hidden));
    check(cudaMemcpyAsync(host.data(), x, sizeOfFloat(tokens * hidden), cudaMemcpyDeviceToHost, compute_),
          "cudaMemcpyAsync (hidden states out)");
    check(cudaStreamSynchronize(compute_), "forward (hidden states)");
    int64_t row = 0;
    for (const Segment& segment : segments) {
      std::vector<float>& out = outputs[segment.request];
      out.insert(out.end(), host.begin() + row * hidden, host.begin() + (row + segment.count) * hidden);
      row += segment.count;
    }
  }
  for (const Segment& segment : segments) {
    const ForwardRequest& request = requests[segment.request];
    sequences_[request.sequence].length = request.position + segment.offset + segment.count;
  }
}

void CudaStage::freeSequence(int64_t sequence) {
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

void CudaStage::waitForCopies() {
  std::lock_guard<std::mutex> lock(mutex_);
  useDevice(device_);
  check(cudaStreamSynchronize(copy_), "cudaStreamSynchronize (copy)");
  copiesInFlight_.clear();
}

uint64_t CudaStage::deviceBytes() const { return weightBytes_ + kvBytes_ + scratchBytes_; }

}  // namespace paraserve::cuda

#endif  // PARASERVE_WITH_CUDA
