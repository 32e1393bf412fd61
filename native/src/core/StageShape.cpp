// Stage shape checks and the tensor list of a layer range (see StageShape.h).
#include "core/StageShape.h"

#include <cmath>

#include "core/Errors.h"

namespace paraserve {

namespace {

// Large enough for any real model, small enough that products of two never overflow int64.
constexpr int64_t kMaxDimension = int64_t{1} << 30;

void requireDimension(int64_t value, const char* field) {
  if (value <= 0 || value > kMaxDimension) {
    throw InvalidArgumentError(std::string("spec.") + field + " must be an integer in [1, 2^30], got " +
                               std::to_string(value));
  }
}

void requirePositiveFinite(double value, const char* field) {
  if (!std::isfinite(value) || value <= 0.0) {
    throw InvalidArgumentError(std::string("spec.") + field + " must be a positive finite number, got " +
                               std::to_string(value));
  }
}

std::string layerName(int64_t layer, const char* suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

}  // namespace

TensorRole tensorRole(const StageSpec& spec, const std::string& name) {
  struct LayerPart {
    const char* suffix;
    TensorPart part;
  };
  static const LayerPart kLayerParts[] = {
      {"input_layernorm.weight", TensorPart::InputNorm},
      {"self_attn.q_proj.weight", TensorPart::Wq},
      {"self_attn.k_proj.weight", TensorPart::Wk},
      {"self_attn.v_proj.weight", TensorPart::Wv},
      {"self_attn.q_proj.bias", TensorPart::Bq},
      {"self_attn.k_proj.bias", TensorPart::Bk},
      {"self_attn.v_proj.bias", TensorPart::Bv},
      {"self_attn.o_proj.weight", TensorPart::Wo},
      {"post_attention_layernorm.weight", TensorPart::PostNorm},
      {"mlp.gate_proj.weight", TensorPart::WGate},
      {"mlp.up_proj.weight", TensorPart::WUp},
      {"mlp.down_proj.weight", TensorPart::WDown},
  };
  if (name == "model.embed_tokens.weight") return {TensorPart::Embeddings, -1};
  if (name == "model.norm.weight") return {TensorPart::FinalNorm, -1};
  if (name == "lm_head.weight") return {TensorPart::LmHead, -1};
  const std::string prefix = "model.layers.";
  const size_t numberEnd = name.find('.', prefix.size());
  if (name.compare(0, prefix.size(), prefix) == 0 && numberEnd != std::string::npos) {
    const int64_t layer = std::stoll(name.substr(prefix.size(), numberEnd - prefix.size()));
    const std::string suffix = name.substr(numberEnd + 1);
    for (const LayerPart& entry : kLayerParts) {
      if (suffix == entry.suffix) return {entry.part, layer - spec.layerStart};
    }
  }
  throw NativeError("NativeError", "no stage storage for tensor " + name);
}

void throwUnknownTensor(const StageSpec& spec, const std::string& name) {
  std::string holds = "layers [" + std::to_string(spec.layerStart) + ", " + std::to_string(spec.layerEnd) + ")";
  if (spec.hasEmbeddings) holds += ", embeddings";
  if (spec.hasHead) {
    holds += spec.tieWordEmbeddings ? ", norm and head (tied to model.embed_tokens.weight)" : ", norm and head";
  }
  throw InvalidArgumentError("the stage has no tensor named '" + name + "' (it holds " + holds + ")");
}

std::string shapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

void validateStageSpec(const StageSpec& spec) {
  requireDimension(spec.vocabSize, "vocabSize");
  requireDimension(spec.hiddenSize, "hiddenSize");
  requireDimension(spec.intermediateSize, "intermediateSize");
  requireDimension(spec.numAttentionHeads, "numAttentionHeads");
  requireDimension(spec.numKeyValueHeads, "numKeyValueHeads");
  requireDimension(spec.headDim, "headDim");
  requireDimension(spec.numLayers, "numLayers");
  requireDimension(spec.maxContext, "maxContext");
  if (spec.numAttentionHeads % spec.numKeyValueHeads != 0) {
    throw InvalidArgumentError("spec.numAttentionHeads (" + std::to_string(spec.numAttentionHeads) +
                               ") must be a multiple of spec.numKeyValueHeads (" +
                               std::to_string(spec.numKeyValueHeads) + ")");
  }
  if (spec.headDim % 2 != 0) {
    throw InvalidArgumentError("spec.headDim must be even for rotary embeddings, got " + std::to_string(spec.headDim));
  }
  if (spec.numAttentionHeads * spec.headDim > kMaxDimension) {
    throw InvalidArgumentError("spec.numAttentionHeads * spec.headDim is too large");
  }
  if (spec.layerStart < 0 || spec.layerStart > spec.layerEnd || spec.layerEnd > spec.numLayers) {
    throw InvalidArgumentError("spec layer range [" + std::to_string(spec.layerStart) + ", " +
                               std::to_string(spec.layerEnd) + ") must lie within [0, " +
                               std::to_string(spec.numLayers) + ")");
  }
  if (spec.device < 0) throw InvalidArgumentError("spec.device must be >= 0, got " + std::to_string(spec.device));
  requirePositiveFinite(spec.rmsNormEps, "rmsNormEps");
  requirePositiveFinite(spec.ropeTheta, "ropeTheta");
  if (spec.rope.kind != RopeScaling::Kind::None) requirePositiveFinite(spec.rope.factor, "rope.factor");
  if (spec.rope.kind == RopeScaling::Kind::Llama3) {
    requirePositiveFinite(spec.rope.lowFreqFactor, "rope.lowFreqFactor");
    requirePositiveFinite(spec.rope.highFreqFactor, "rope.highFreqFactor");
    requirePositiveFinite(spec.rope.originalMaxPositionEmbeddings, "rope.originalMaxPositionEmbeddings");
    if (!(spec.rope.highFreqFactor > spec.rope.lowFreqFactor)) {
      throw InvalidArgumentError("spec.rope.highFreqFactor must be greater than spec.rope.lowFreqFactor");
    }
  }
}

std::vector<TensorSlot> stageTensors(const StageSpec& spec) {
  const int64_t hidden = spec.hiddenSize;
  const int64_t qDim = spec.numAttentionHeads * spec.headDim;
  const int64_t kvDim = spec.numKeyValueHeads * spec.headDim;
  const int64_t inter = spec.intermediateSize;
  const bool bindsEmbeddings = spec.hasEmbeddings || (spec.hasHead && spec.tieWordEmbeddings);

  std::vector<TensorSlot> slots;
  if (bindsEmbeddings) slots.push_back({"model.embed_tokens.weight", {spec.vocabSize, hidden}});
  for (int64_t layer = spec.layerStart; layer < spec.layerEnd; ++layer) {
    slots.push_back({layerName(layer, "input_layernorm.weight"), {hidden}});
    slots.push_back({layerName(layer, "self_attn.q_proj.weight"), {qDim, hidden}});
    slots.push_back({layerName(layer, "self_attn.k_proj.weight"), {kvDim, hidden}});
    slots.push_back({layerName(layer, "self_attn.v_proj.weight"), {kvDim, hidden}});
    if (spec.attentionBias) {
      slots.push_back({layerName(layer, "self_attn.q_proj.bias"), {qDim}});
      slots.push_back({layerName(layer, "self_attn.k_proj.bias"), {kvDim}});
      slots.push_back({layerName(layer, "self_attn.v_proj.bias"), {kvDim}});
    }
    slots.push_back({layerName(layer, "self_attn.o_proj.weight"), {hidden, qDim}});
    slots.push_back({layerName(layer, "post_attention_layernorm.weight"), {hidden}});
    slots.push_back({layerName(layer, "mlp.gate_proj.weight"), {inter, hidden}});
    slots.push_back({layerName(layer, "mlp.up_proj.weight"), {inter, hidden}});
    slots.push_back({layerName(layer, "mlp.down_proj.weight"), {hidden, inter}});
  }
  if (spec.hasHead) {
    slots.push_back({"model.norm.weight", {hidden}});
    if (!spec.tieWordEmbeddings) slots.push_back({"lm_head.weight", {spec.vocabSize, hidden}});
  }
  return slots;
}

void checkBinding(const TensorSlot& slot, const TensorBinding& binding) {
  if (binding.shape != slot.shape) {
    throw InvalidArgumentError("tensor " + binding.name + " has shape " + shapeString(binding.shape) +
                               " but the stage expects " + shapeString(slot.shape));
  }
  uint64_t elements = 1;
  for (int64_t d : slot.shape) elements *= static_cast<uint64_t>(d);
  const uint64_t bytes = elements * dtypeSize(binding.dtype);
  const uint64_t size = binding.buffer->bytes();
  if (binding.offset > size || bytes > size - binding.offset) {
    throw InvalidArgumentError("tensor " + binding.name + " (" + std::to_string(bytes) + " bytes of " +
                               dtypeName(binding.dtype) + " at offset " + std::to_string(binding.offset) +
                               ") does not fit in its " + std::to_string(size) + "-byte host buffer");
  }
}

int64_t requestTokenCount(const StageSpec& spec, const ForwardRequest& request) {
  if (spec.hasEmbeddings) return static_cast<int64_t>(request.tokens.size());
  if (request.inputLink) return request.inputTokens;
  return static_cast<int64_t>(request.hidden.size()) / spec.hiddenSize;
}

namespace {

// A link a request names must be the right end of a link on the stage's own device.
void checkLinkEnd(const StageSpec& spec, const StageLink& link, bool sends, const char* what) {
  if (link.backend() != spec.backend || link.device() != spec.device) {
    throw InvalidArgumentError(std::string(what) + " is on " + backendName(link.backend()) + " device " +
                               std::to_string(link.device()) + ", the stage on " + backendName(spec.backend) +
                               " device " + std::to_string(spec.device));
  }
  if (link.sends() != sends) {
    throw InvalidArgumentError(std::string(what) + " must be the " + (sends ? "sending" : "receiving") +
                               " end of its link");
  }
}

}  // namespace

void checkForwardRequest(const StageSpec& spec, const ForwardRequest& request) {
  if (spec.hasEmbeddings) {
    if (!request.hidden.empty() || request.inputLink) {
      throw InvalidArgumentError("input.hidden must be null on a stage with embeddings (pass input.tokens)");
    }
    if (request.tokens.empty()) throw InvalidArgumentError("input.tokens must hold at least one token id");
    for (size_t i = 0; i < request.tokens.size(); ++i) {
      const int32_t id = request.tokens[i];
      if (id < 0 || id >= spec.vocabSize) {
        throw InvalidArgumentError("input.tokens[" + std::to_string(i) + "] = " + std::to_string(id) +
                                   " is outside the vocabulary [0, " + std::to_string(spec.vocabSize) + ")");
      }
    }
  } else if (request.inputLink) {
    if (!request.tokens.empty()) {
      throw InvalidArgumentError("input.tokens must be null on a stage without embeddings (layers start at " +
                                 std::to_string(spec.layerStart) + "; pass input.hidden)");
    }
    checkLinkEnd(spec, *request.inputLink, false, "input.hidden.link");
    if (request.inputTokens < 1) {
      throw InvalidArgumentError("input.hidden.tokenCount must be >= 1, got " + std::to_string(request.inputTokens));
    }
  } else {
    if (!request.tokens.empty()) {
      throw InvalidArgumentError("input.tokens must be null on a stage without embeddings (layers start at " +
                                 std::to_string(spec.layerStart) + "; pass input.hidden)");
    }
    const auto length = static_cast<int64_t>(request.hidden.size());
    if (length == 0 || length % spec.hiddenSize != 0) {
      throw InvalidArgumentError("input.hidden has " + std::to_string(length) +
                                 " floats, which is not a positive multiple of hiddenSize " +
                                 std::to_string(spec.hiddenSize));
    }
  }
  if (request.outputLink) {
    if (spec.hasHead) throw InvalidArgumentError("a stage with the head returns logits: it sends nothing over a link");
    checkLinkEnd(spec, *request.outputLink, true, "output.link");
  }
  if (request.position < 0) {
    throw InvalidArgumentError("input.position must be >= 0, got " + std::to_string(request.position));
  }
  const int64_t end = request.position + requestTokenCount(spec, request);
  if (end > spec.maxContext) {
    throw InvalidArgumentError("sequence " + std::to_string(request.sequence) + " would hold " + std::to_string(end) +
                               " tokens, past the stage's maxContext of " + std::to_string(spec.maxContext));
  }
}

}  // namespace paraserve
