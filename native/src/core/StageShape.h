// What a stage must look like, shared by every backend: spec validation, the list of
// Hugging Face tensors (with shapes) a stage of a given layer range binds, and the checks
// on bindings and forward inputs. Backends only add what is specific to them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/Backend.h"

namespace paraserve {

struct TensorSlot {
  std::string name;            // Hugging Face name
  std::vector<int64_t> shape;  // HF layout: linear weights are [out, in]
};

// Throws InvalidArgumentError naming the first field that is out of range.
void validateStageSpec(const StageSpec& spec);

// Every tensor a stage of spec binds, in layer order: embeddings (stage with embeddings),
// the layers' tensors, then norm and head (head stage; model.embed_tokens.weight stands in
// for lm_head.weight when tieWordEmbeddings).
std::vector<TensorSlot> stageTensors(const StageSpec& spec);

// Which part of a stage a tensor of stageTensors(spec) is: a layer weight (with the layer's
// index within the stage) or one of the embedding, final norm and head tensors.
enum class TensorPart {
  Embeddings, FinalNorm, LmHead,
  InputNorm, Wq, Wk, Wv, Bq, Bk, Bv, Wo, PostNorm, WGate, WUp, WDown,
};
struct TensorRole {
  TensorPart part = TensorPart::Embeddings;
  int64_t layer = -1;  // index within the stage for layer parts, else -1
};
// name must be one of stageTensors(spec); anything else is a NativeError (a backend bug).
TensorRole tensorRole(const StageSpec& spec, const std::string& name);
// The InvalidArgumentError for a binding whose name the stage does not hold, saying what it holds.
[[noreturn]] void throwUnknownTensor(const StageSpec& spec, const std::string& name);

// Checks shape against the slot and the byte range against the buffer.
void checkBinding(const TensorSlot& slot, const TensorBinding& binding);

// Checks the input against the stage's shape: tokens xor hidden (or a link's input), lengths,
// token ids, the links' ends and devices, position and maxContext. Throws InvalidArgumentError.
void checkForwardRequest(const StageSpec& spec, const ForwardRequest& request);
int64_t requestTokenCount(const StageSpec& spec, const ForwardRequest& request);

std::string shapeString(const std::vector<int64_t>& shape);

}  // namespace paraserve
