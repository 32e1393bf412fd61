// The CPU stage: binding, KV cache bookkeeping and the layer loop (see CpuStage.h).
#include "cpu/CpuStage.h"

#include <algorithm>
#include <numeric>

#include "core/Errors.h"
#include "core/Rope.h"
#include "cpu/CpuKernels.h"

namespace paraserve::cpu {

namespace {

// Smallest KV cache allocation of a sequence, in positions; it then doubles up to maxContext.
constexpr int64_t kMinCapacity = 32;

}  // namespace

struct CpuStage::Activations {
  Activations(const StageSpec& spec, int64_t count)
      : count(count),
        x(count * spec.hiddenSize),
        normed(count * spec.hiddenSize),
        q(count * spec.numAttentionHeads * spec.headDim),
        k(count * spec.numKeyValueHeads * spec.headDim),
        v(count * spec.numKeyValueHeads * spec.headDim),
        attn(count * spec.numAttentionHeads * spec.headDim),
        projected(count * spec.hiddenSize),
        gate(count * spec.intermediateSize),
        up(count * spec.intermediateSize),
        cosT(count * spec.headDim / 2),
        sinT(count * spec.headDim / 2) {}

  int64_t count;
  std::vector<float> x;          // (count, hidden): the residual stream
  std::vector<float> normed;     // (count, hidden)
  std::vector<float> q;          // (count, heads, headDim)
  std::vector<float> k;          // (count, kvHeads, headDim)
  std::vector<float> v;          // (count, kvHeads, headDim)
  std::vector<float> attn;       // (count, heads, headDim)
  std::vector<float> projected;  // (count, hidden)
  std::vector<float> gate;       // (count, inter)
  std::vector<float> up;         // (count, inter)
  std::vector<float> cosT;       // (count, headDim/2)
  std::vector<float> sinT;       // (count, headDim/2)
};

CpuStage::Sequence::~Sequence() { kvBytes -= bytes; }

CpuStage::CpuStage(const StageSpec& spec)
    : spec_(spec),
      invFreq_(ropeInverseFrequencies(spec.headDim, spec.ropeTheta, spec.rope)),
      layers_(static_cast<size_t>(spec.layerEnd - spec.layerStart)) {
  for (TensorSlot& expected : stageTensors(spec)) {
    std::vector<float>* storage = storageFor(expected.name);
    slotIndex_.emplace(expected.name, slots_.size());
    slots_.push_back({std::move(expected), storage, false});
  }
}

std::vector<float>* CpuStage::storageFor(const std::string& name) {
  const TensorRole role = tensorRole(spec_, name);
  switch (role.part) {
    case TensorPart::Embeddings:
      return &embed_;
    case TensorPart::FinalNorm:
      return &norm_;
    case TensorPart::LmHead:
      return &lmHead_;
    default:
      break;
  }
  Layer& layer = layers_[static_cast<size_t>(role.layer)];
  switch (role.part) {
    case TensorPart::InputNorm:
      return &layer.inputNorm;
    case TensorPart::Wq:
      return &layer.wq;
    case TensorPart::Wk:
      return &layer.wk;
    case TensorPart::Wv:
      return &layer.wv;
    case TensorPart::Bq:
      return &layer.bq;
    case TensorPart::Bk:
      return &layer.bk;
    case TensorPart::Bv:
      return &layer.bv;
    case TensorPart::Wo:
      return &layer.wo;
    case TensorPart::PostNorm:
      return &layer.postNorm;
    case TensorPart::WGate:
      return &layer.wGate;
    case TensorPart::WUp:
      return &layer.wUp;
    default:
      return &layer.wDown;
  }
}

void CpuStage::bindTensor(const TensorBinding& binding) {
  const auto found = slotIndex_.find(binding.name);
  if (found == slotIndex_.end()) throwUnknownTensor(spec_, binding.name);
  Slot& slot = slots_[found->second];
  checkBinding(slot.expected, binding);
  uint64_t elements = 1;
  for (int64_t d : slot.expected.shape) elements *= static_cast<uint64_t>(d);
  std::vector<float> converted(elements);
  convertToF32(binding.buffer->data() + binding.offset, binding.dtype, elements, converted.data());
  weightBytes_ -= slot.storage->size() * sizeof(float);
  *slot.storage = std::move(converted);
  weightBytes_ += elements * sizeof(float);
  slot.bound = true;
}

std::vector<std::string> CpuStage::missingTensors() const {
  std::vector<std::string> missing;
  for (const Slot& slot : slots_) {
    if (!slot.bound) missing.push_back(slot.expected.name);
  }
  return missing;
}

std::shared_ptr<CpuStage::Sequence> CpuStage::sequenceFor(int64_t id, int64_t position) {
  std::lock_guard<std::mutex> lock(sequencesMutex_);
  const auto found = sequences_.find(id);
  if (found != sequences_.end()) return found->second;
  if (position != 0) {
    throw InvalidArgumentError("sequence " + std::to_string(id) + " has no cached tokens, so input.position must be 0, got " +
                               std::to_string(position));
  }
  auto sequence = std::make_shared<Sequence>(kvBytes_);
  sequence->keys.resize(layers_.size());
  sequence->values.resize(layers_.size());
  sequences_.emplace(id, sequence);
  return sequence;
}

void CpuStage::reserve(Sequence& sequence, int64_t positions) const {
  if (positions <= sequence.capacity) return;
  const int64_t target = std::min(spec_.maxContext, std::max({positions, 2 * sequence.capacity, kMinCapacity}));
  const auto floats = static_cast<size_t>(target * spec_.numKeyValueHeads * spec_.headDim);
  const auto account = [&sequence] {
    uint64_t bytes = 0;
    for (const auto& buffer : sequence.keys) bytes += buffer.capacity() * sizeof(float);
    for (const auto& buffer : sequence.values) bytes += buffer.capacity() * sizeof(float);
    sequence.kvBytes += bytes - sequence.bytes;
    sequence.bytes = bytes;
  };
  try {
    for (size_t layer = 0; layer < layers_.size(); ++layer) {
      sequence.keys[layer].resize(floats);
      sequence.values[layer].resize(floats);
    }
  } catch (...) {
    account();
    throw OutOfMemoryError("could not grow the KV cache of a sequence to " + std::to_string(target) + " positions");
  }
  account();
  sequence.capacity = target;
}

std::vector<float> CpuStage::forward(const ForwardRequest& request) { return std::move(run({&request}).front()); }

std::vector<std::vector<float>> CpuStage::forwardBatch(const std::vector<ForwardRequest>& requests) {
  std::vector<const ForwardRequest*> pointers;
  pointers.reserve(requests.size());
  for (const ForwardRequest& request : requests) pointers.push_back(&request);
  return run(pointers);
}

std::vector<std::vector<float>> CpuStage::run(const std::vector<const ForwardRequest*>& requests) {
  if (requests.empty()) return {};
  for (const ForwardRequest* request : requests) checkForwardRequest(spec_, *request);
  const std::vector<std::string> missing = missingTensors();
  if (!missing.empty()) {
    throw InvalidArgumentError("the stage still lacks " + std::to_string(missing.size()) + " tensor(s), first " +
                               missing.front() + "; bind them before forward");
  }
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&requests](size_t a, size_t b) { return requests[a]->sequence < requests[b]->sequence; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (requests[order[i]]->sequence == requests[order[i - 1]]->sequence) {
      throw InvalidArgumentError("sequence " + std::to_string(requests[order[i]]->sequence) +
                                 " appears more than once in one batch");
    }
  }

  std::vector<std::shared_ptr<Sequence>> sequences(requests.size());
  std::vector<std::unique_lock<std::mutex>> locks;
  locks.reserve(requests.size());
  for (const size_t i : order) {
    sequences[i] = sequenceFor(requests[i]->sequence, requests[i]->position);
    locks.emplace_back(sequences[i]->mutex);
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i]->position > sequences[i]->length) {
      throw InvalidArgumentError("input.position " + std::to_string(requests[i]->position) +
                                 " leaves a gap: sequence " + std::to_string(requests[i]->sequence) + " holds " +
                                 std::to_string(sequences[i]->length) + " cached tokens");
    }
  }

  const int64_t hidden = spec_.hiddenSize;
  const int64_t halfDim = spec_.headDim / 2;
  try {
    std::vector<Segment> segments;
    segments.reserve(requests.size());
    int64_t rows = 0;
    for (size_t i = 0; i < requests.size(); ++i) {
      const int64_t count = requestTokenCount(spec_, *requests[i]);
      reserve(*sequences[i], requests[i]->position + count);
      segments.push_back({sequences[i].get(), requests[i]->position, rows, count});
      rows += count;
    }
    Activations act(spec_, rows);
    for (size_t i = 0; i < requests.size(); ++i) {
      const Segment& segment = segments[i];
      float* x = act.x.data() + segment.row * hidden;
      if (spec_.hasEmbeddings) {
        for (int64_t t = 0; t < segment.count; ++t) {
          const float* row = embed_.data() + static_cast<int64_t>(requests[i]->tokens[t]) * hidden;
          std::copy(row, row + hidden, x + t * hidden);
        }
      } else {
        std::copy(requests[i]->hidden.begin(), requests[i]->hidden.end(), x);
      }
      ropeTables(invFreq_, segment.position, segment.count, act.cosT.data() + segment.row * halfDim,
                 act.sinT.data() + segment.row * halfDim);
    }
    for (size_t layer = 0; layer < layers_.size(); ++layer) runLayer(layer, segments, act);
    for (const Segment& segment : segments) segment.sequence->length = segment.position + segment.count;
    if (spec_.hasHead) return head(act.x, segments);
    if (segments.size() == 1) return {std::move(act.x)};
    std::vector<std::vector<float>> outputs;
    outputs.reserve(segments.size());
    for (const Segment& segment : segments) {
      const auto first = act.x.begin() + segment.row * hidden;
      outputs.emplace_back(first, first + segment.count * hidden);
    }
    return outputs;
  } catch (...) {
    // Positions from each request's position on may hold this call's partial keys/values.
    for (size_t i = 0; i < requests.size(); ++i) {
      sequences[i]->length = std::min(sequences[i]->length, requests[i]->position);
    }
    throw;
  }
}

void CpuStage::runLayer(size_t layerIndex, const std::vector<Segment>& segments, Activations& act) const {
  const Layer& layer = layers_[layerIndex];
  const int64_t count = act.count;
  const int64_t hidden = spec_.hiddenSize;
  const int64_t heads = spec_.numAttentionHeads;
  const int64_t kvHeads = spec_.numKeyValueHeads;
  const int64_t headDim = spec_.headDim;
  const int64_t qDim = heads * headDim;
  const int64_t kvDim = kvHeads * headDim;
  const int64_t inter = spec_.intermediateSize;
  const bool bias = spec_.attentionBias;

  rmsNorm(act.x.data(), layer.inputNorm.data(), count, hidden, spec_.rmsNormEps, act.normed.data());
  linear(act.normed.data(), layer.wq.data(), bias ? layer.bq.data() : nullptr, count, hidden, qDim, act.q.data());
  linear(act.normed.data(), layer.wk.data(), bias ? layer.bk.data() : nullptr, count, hidden, kvDim, act.k.data());
  linear(act.normed.data(), layer.wv.data(), bias ? layer.bv.data() : nullptr, count, hidden, kvDim, act.v.data());
  applyRope(act.q.data(), act.cosT.data(), act.sinT.data(), count, heads, headDim);
  applyRope(act.k.data(), act.cosT.data(), act.sinT.data(), count, kvHeads, headDim);

  for (const Segment& segment : segments) {
    float* keys = segment.sequence->keys[layerIndex].data();
    float* values = segment.sequence->values[layerIndex].data();
    const int64_t first = segment.row * kvDim;
    const int64_t last = (segment.row + segment.count) * kvDim;
    std::copy(act.k.begin() + first, act.k.begin() + last, keys + segment.position * kvDim);
    std::copy(act.v.begin() + first, act.v.begin() + last, values + segment.position * kvDim);
    attention(act.q.data() + segment.row * qDim, keys, values, segment.count, segment.position, heads, kvHeads,
              headDim, act.attn.data() + segment.row * qDim);
  }
  linear(act.attn.data(), layer.wo.data(), nullptr, count, qDim, hidden, act.projected.data());
  addInPlace(act.x.data(), act.projected.data(), count * hidden);

  rmsNorm(act.x.data(), layer.postNorm.data(), count, hidden, spec_.rmsNormEps, act.normed.data());
  linear(act.normed.data(), layer.wGate.data(), nullptr, count, hidden, inter, act.gate.data());
  linear(act.normed.data(), layer.wUp.data(), nullptr, count, hidden, inter, act.up.data());
  swiglu(act.gate.data(), act.up.data(), count * inter);
  linear(act.gate.data(), layer.wDown.data(), nullptr, count, inter, hidden, act.projected.data());
  addInPlace(act.x.data(), act.projected.data(), count * hidden);
}

std::vector<std::vector<float>> CpuStage::head(const std::vector<float>& x, const std::vector<Segment>& segments) const {
  const int64_t hidden = spec_.hiddenSize;
  const int64_t vocab = spec_.vocabSize;
  const auto rows = static_cast<int64_t>(segments.size());
  std::vector<float> normed(static_cast<size_t>(rows * hidden));
  for (int64_t i = 0; i < rows; ++i) {
    const Segment& segment = segments[static_cast<size_t>(i)];
    rmsNorm(x.data() + (segment.row + segment.count - 1) * hidden, norm_.data(), 1, hidden, spec_.rmsNormEps,
            normed.data() + i * hidden);
  }
  const std::vector<float>& weights = spec_.tieWordEmbeddings ? embed_ : lmHead_;
  std::vector<float> logits(static_cast<size_t>(rows * vocab));
  linear(normed.data(), weights.data(), nullptr, rows, hidden, vocab, logits.data());
  std::vector<std::vector<float>> outputs;
  outputs.reserve(segments.size());
  for (int64_t i = 0; i < rows; ++i) outputs.emplace_back(logits.begin() + i * vocab, logits.begin() + (i + 1) * vocab);
  return outputs;
}

void CpuStage::releaseSequence(int64_t sequence) {
  std::lock_guard<std::mutex> lock(sequencesMutex_);
  sequences_.erase(sequence);
}

uint64_t CpuStage::deviceBytes() const { return weightBytes_ + kvBytes_; }

}  // namespace paraserve::cpu
