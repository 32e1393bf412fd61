// A stage on the CPU backend: fp32 weights converted at bind time, a growing KV cache per
// sequence, and the Llama-family forward pass in transformers' semantics (CpuKernels.h).
// forward and forwardBatch share one pass: the rows of every request in a batch are
// concatenated, so each weight matrix is read once per step for the whole batch, while
// attention runs per request against its own sequence's cache. The kernels compute each
// row independently in a fixed order, so a batched request gets bit-identical outputs to
// the same request run alone.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/Backend.h"
#include "core/StageShape.h"

namespace paraserve::cpu {

class CpuStage final : public Stage {
 public:
  explicit CpuStage(const StageSpec& spec);

  void bindTensor(const TensorBinding& binding) override;
  std::vector<std::string> missingTensors() const override;
  std::vector<float> forward(const ForwardRequest& request) override;
  // Throws InvalidArgumentError when a sequence appears twice; locks the sequences in id
  // order, so batches sharing sequences cannot deadlock.
  std::vector<std::vector<float>> forwardBatch(const std::vector<ForwardRequest>& requests) override;
  void releaseSequence(int64_t sequence) override;
  uint64_t deviceBytes() const override;

 private:
  struct Layer {
    std::vector<float> inputNorm;  // (hidden)
    std::vector<float> wq;         // (heads*headDim, hidden)
    std::vector<float> wk;         // (kvHeads*headDim, hidden)
    std::vector<float> wv;         // (kvHeads*headDim, hidden)
    std::vector<float> bq;         // (heads*headDim), attentionBias only
    std::vector<float> bk;         // (kvHeads*headDim), attentionBias only
    std::vector<float> bv;         // (kvHeads*headDim), attentionBias only
    std::vector<float> wo;         // (hidden, heads*headDim)
    std::vector<float> postNorm;   // (hidden)
    std::vector<float> wGate;      // (inter, hidden)
    std::vector<float> wUp;        // (inter, hidden)
    std::vector<float> wDown;      // (hidden, inter)
  };

  struct Slot {
    TensorSlot expected;
    std::vector<float>* storage;
    bool bound = false;
  };

  // One sequence's KV cache. Its bytes are counted in kvBytes_ for as long as it lives, so
  // a sequence released while a forward still holds it is counted until that forward ends.
  struct Sequence {
    explicit Sequence(std::atomic<uint64_t>& counter) : kvBytes(counter) {}
    ~Sequence();
    std::mutex mutex;   // held for a whole forward: one forward per sequence at a time
    int64_t length = 0;    // cached positions [0, length)
    int64_t capacity = 0;  // positions every layer's buffers hold
    uint64_t bytes = 0;
    std::vector<std::vector<float>> keys;    // per layer (capacity, kvHeads*headDim), rotated
    std::vector<std::vector<float>> values;  // per layer (capacity, kvHeads*headDim)
    std::atomic<uint64_t>& kvBytes;
  };

  struct Activations;  // per-pass scratch, CpuStage.cpp

  // One request's rows in a pass; its sequence is locked for the whole pass.
  struct Segment {
    Sequence* sequence;
    int64_t position;  // of the request's first token
    int64_t row;       // first row of the request in the pass's activations
    int64_t count;     // tokens of the request
  };

  std::vector<float>* storageFor(const std::string& name);
  std::shared_ptr<Sequence> sequenceFor(int64_t id, int64_t position);
  void reserve(Sequence& sequence, int64_t positions) const;
  // The pass behind forward and forwardBatch: outputs in request order.
  std::vector<std::vector<float>> run(const std::vector<const ForwardRequest*>& requests);
  void runLayer(size_t layerIndex, const std::vector<Segment>& segments, Activations& act) const;
  // Logits (vocabSize) of each segment's last row.
  std::vector<std::vector<float>> head(const std::vector<float>& x, const std::vector<Segment>& segments) const;

  StageSpec spec_;
  std::vector<float> invFreq_;
  std::vector<Layer> layers_;
  std::vector<float> embed_;  // (vocab, hidden); also the head when tieWordEmbeddings
  std::vector<float> norm_;   // (hidden)
  std::vector<float> lmHead_; // (vocab, hidden), untied head only
  std::vector<Slot> slots_;   // layer order
  std::unordered_map<std::string, size_t> slotIndex_;
  std::atomic<uint64_t> weightBytes_{0};
  std::atomic<uint64_t> kvBytes_{0};  // declared before sequences_: outlives them
  std::mutex sequencesMutex_;
  std::unordered_map<int64_t, std::shared_ptr<Sequence>> sequences_;
};

}  // namespace paraserve::cpu
