// Stage exports (see AddonStage.h). Everything but forward and forwardBatch runs
// synchronously on the JS thread. On backends with links (AddonLink.h) an input's hidden
// states may come over a link (a LinkInput), and forwardToLink sends its output over one. Those validate their inputs here, then run on a libuv
// worker thread through ForwardWorker, which pins the handle (a reference) and shares
// ownership of the stage, so disposeStage during a forward frees the stage only when that
// forward ends.
#include "AddonStage.h"

#include <memory>
#include <unordered_set>
#include <utility>

#include "AddonAsync.h"
#include "AddonErrors.h"
#include "AddonHandles.h"
#include "AddonHostBuffer.h"
#include "AddonLink.h"
#include "AddonValues.h"
#include "core/Backends.h"
#include "core/Errors.h"
#include "core/StageShape.h"

namespace paraserve {

namespace {

constexpr napi_type_tag kStageTag = {0x7061726173657276ULL, 0x5374616765303031ULL};

struct StageBox {
  std::shared_ptr<Stage> stage;  // null once disposed
  StageSpec spec;
  int64_t forwardsInFlight = 0;  // JS thread only
};

StageBox& unwrapBox(const Napi::Value& value) {
  return unwrapHandle<StageBox>(value, kStageTag, "stage must be a StageHandle from createStage");
}

StageBox& liveStage(const Napi::Value& value) {
  StageBox& box = unwrapBox(value);
  if (!box.stage) throw DisposedError("the stage was disposed (disposeStage)");
  return box;
}

RopeScaling parseRope(const Napi::Value& value) {
  const Napi::Object rope = objectValue(value, "spec.rope");
  const std::string kind = stringValue(rope.Get("kind"), "spec.rope.kind");
  RopeScaling out;
  if (kind == "none") return out;
  if (kind == "linear") {
    out.kind = RopeScaling::Kind::Linear;
    out.factor = numberValue(rope.Get("factor"), "spec.rope.factor");
    return out;
  }
  if (kind == "llama3") {
    out.kind = RopeScaling::Kind::Llama3;
    out.factor = numberValue(rope.Get("factor"), "spec.rope.factor");
    out.lowFreqFactor = numberValue(rope.Get("lowFreqFactor"), "spec.rope.lowFreqFactor");
    out.highFreqFactor = numberValue(rope.Get("highFreqFactor"), "spec.rope.highFreqFactor");
    out.originalMaxPositionEmbeddings =
        numberValue(rope.Get("originalMaxPositionEmbeddings"), "spec.rope.originalMaxPositionEmbeddings");
    return out;
  }
  throw InvalidArgumentError("spec.rope.kind must be 'none', 'linear' or 'llama3', got '" + kind + "'");
}

StageSpec parseStageSpec(const Napi::Value& value) {
  const Napi::Object o = objectValue(value, "spec");
  const auto integer = [&o](const char* key) {
    return integerValue(o.Get(key), std::string("spec.") + key, -kMaxSafeInteger, kMaxSafeInteger);
  };
  const auto flag = [&o](const char* key) { return boolValue(o.Get(key), std::string("spec.") + key); };
  StageSpec spec;
  spec.backend = backendValue(o.Get("backend"), "spec.backend");
  spec.device = integer("device");
  spec.vocabSize = integer("vocabSize");
  spec.hiddenSize = integer("hiddenSize");
  spec.intermediateSize = integer("intermediateSize");
  spec.numAttentionHeads = integer("numAttentionHeads");
  spec.numKeyValueHeads = integer("numKeyValueHeads");
  spec.headDim = integer("headDim");
  spec.numLayers = integer("numLayers");
  spec.layerStart = integer("layerStart");
  spec.layerEnd = integer("layerEnd");
  spec.hasEmbeddings = flag("hasEmbeddings");
  spec.hasHead = flag("hasHead");
  spec.tieWordEmbeddings = flag("tieWordEmbeddings");
  spec.attentionBias = flag("attentionBias");
  spec.rmsNormEps = numberValue(o.Get("rmsNormEps"), "spec.rmsNormEps");
  spec.ropeTheta = numberValue(o.Get("ropeTheta"), "spec.ropeTheta");
  spec.rope = parseRope(o.Get("rope"));
  spec.maxContext = integer("maxContext");
  spec.computeDType = parseDType(stringValue(o.Get("computeDType"), "spec.computeDType"), "spec.computeDType");
  return spec;
}

TensorBinding parseBinding(const Napi::Value& value) {
  const Napi::Object o = objectValue(value, "binding");
  TensorBinding binding;
  binding.name = stringValue(o.Get("name"), "binding.name");
  binding.dtype = parseDType(stringValue(o.Get("dtype"), "binding.dtype"), "binding.dtype");
  const Napi::Value shape = o.Get("shape");
  if (!shape.IsArray()) throw InvalidArgumentError("binding.shape must be an array of integers");
  const auto dims = shape.As<Napi::Array>();
  for (uint32_t i = 0; i < dims.Length(); ++i) {
    binding.shape.push_back(
        integerValue(dims.Get(i), "binding.shape[" + std::to_string(i) + "]", 0, kMaxSafeInteger));
  }
  binding.buffer = sharedHostBuffer(o.Get("buffer"), "binding.buffer");
  binding.offset = static_cast<uint64_t>(integerValue(o.Get("offset"), "binding.offset", 0, kMaxSafeInteger));
  return binding;
}

// Copies a typed array of the given kind, or returns false for null.
template <typename T>
bool copyTypedArray(const Napi::Value& value, napi_typedarray_type type, const char* what, std::vector<T>& out) {
  if (value.IsNull()) return false;
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != type) {
    throw InvalidArgumentError(std::string(what) + " must be a " +
                               (type == napi_int32_array ? "Int32Array" : "Float32Array or LinkInput") + " or null");
  }
  const auto array = value.As<Napi::TypedArrayOf<T>>();
  if (array.ElementLength() == 0) throw InvalidArgumentError(std::string(what) + " is empty");
  out.assign(array.Data(), array.Data() + array.ElementLength());
  return true;
}

ForwardRequest parseForwardInput(const Napi::Value& value) {
  const Napi::Object o = objectValue(value, "input");
  ForwardRequest request;
  request.sequence = integerValue(o.Get("sequence"), "input.sequence", -kMaxSafeInteger, kMaxSafeInteger);
  request.position = integerValue(o.Get("position"), "input.position", 0, kMaxSafeInteger);
  const bool hasTokens = copyTypedArray(o.Get("tokens"), napi_int32_array, "input.tokens", request.tokens);
  const Napi::Value hidden = o.Get("hidden");
  bool hasHidden = false;
  if (hidden.IsObject() && !hidden.IsTypedArray()) {
    // A LinkInput: the hidden states come over a link.
    const Napi::Object link = hidden.As<Napi::Object>();
    request.inputLink = linkFromHandle(link.Get("link"), "input.hidden.link");
    request.inputTag = static_cast<uint64_t>(integerValue(link.Get("tag"), "input.hidden.tag", 0, kMaxSafeInteger));
    request.inputTokens = integerValue(link.Get("tokenCount"), "input.hidden.tokenCount", 1, kMaxSafeInteger);
    hasHidden = true;
  } else {
    hasHidden = copyTypedArray(hidden, napi_float32_array, "input.hidden", request.hidden);
  }
  if (hasTokens == hasHidden) throw InvalidArgumentError("exactly one of input.tokens and input.hidden must be set");
  return request;
}

// Runs Stage::forward (one request) or Stage::forwardBatch (batch) on a libuv worker thread;
// resolves to the one output, or to an array of outputs in request order.
class ForwardWorker final : public Napi::AsyncWorker {
 public:
  ForwardWorker(Napi::Env env, const Napi::External<StageBox>& handle, std::vector<ForwardRequest> requests, bool batch)
      : Napi::AsyncWorker(env, batch ? "paraserve.forwardBatch" : "paraserve.forward"),
        deferred_(Napi::Promise::Deferred::New(env)),
        pin_(Napi::Persistent(handle)),
        box_(handle.Data()),
        stage_(box_->stage),
        requests_(std::move(requests)),
        batch_(batch) {
    ++box_->forwardsInFlight;
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      if (batch_) {
        outputs_ = stage_->forwardBatch(requests_);
      } else {
        outputs_.push_back(stage_->forward(requests_.front()));
      }
    } catch (...) {
      const CaughtError caught = describeCurrentException();
      errorName_ = caught.name;
      SetError(caught.message);
    }
  }

  void OnOK() override {
    --box_->forwardsInFlight;
    try {
      const auto toArray = [this](const std::vector<float>& output) {
        auto array = Napi::Float32Array::New(Env(), output.size());
        std::copy(output.begin(), output.end(), array.Data());
        return array;
      };
      if (!batch_) {
        deferred_.Resolve(toArray(outputs_.front()));
        return;
      }
      Napi::Array result = Napi::Array::New(Env(), outputs_.size());
      for (size_t i = 0; i < outputs_.size(); ++i) result.Set(static_cast<uint32_t>(i), toArray(outputs_[i]));
      deferred_.Resolve(result);
    } catch (const Napi::Error& error) {
      deferred_.Reject(error.Value());
    }
  }

  void OnError(const Napi::Error& error) override {
    --box_->forwardsInFlight;
    deferred_.Reject(namedError(Env(), errorName_, error.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::External<StageBox>> pin_;  // keeps the handle alive until settled
  StageBox* box_;
  std::shared_ptr<Stage> stage_;
  std::vector<ForwardRequest> requests_;
  bool batch_;
  std::vector<std::vector<float>> outputs_;
  const char* errorName_ = "NativeError";
};

// Never throws: every failure rejects the returned promise.
Napi::Value PrepareDevice(const Napi::CallbackInfo& info) {
  try {
    Backend* backend = &requireBackend(backendValue(info[0], "backend"));
    const int64_t device = integerValue(info[1], "device", 0, kMaxSafeInteger);
    return runAsyncVoid(info.Env(), "paraserve.prepareDevice", [backend, device] { backend->prepareDevice(device); });
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

Napi::Value stageHandle(Napi::Env env, std::unique_ptr<Stage> stage, const StageSpec& spec) {
  auto box = std::make_unique<StageBox>();
  box->stage = std::move(stage);
  box->spec = spec;
  return wrapHandle(env, std::move(box), kStageTag);
}

Napi::Value CreateStage(const Napi::CallbackInfo& info) {
  StageSpec spec = parseStageSpec(info[0]);
  validateStageSpec(spec);
  return stageHandle(info.Env(), requireBackend(spec.backend).createStage(spec), spec);
}

// Synchronous like createStage: it only queues the device-to-device copy.
Napi::Value CloneStage(const Napi::CallbackInfo& info) {
  StageBox& box = liveStage(info[0]);
  StageSpec spec = box.spec;
  spec.device = integerValue(info[1], "device", 0, kMaxSafeInteger);
  if (spec.device == box.spec.device) throw InvalidArgumentError("the stage is on device " + std::to_string(spec.device) + " already");
  return stageHandle(info.Env(), box.stage->cloneTo(spec.device), spec);
}

Napi::Value PeerAccess(const Napi::CallbackInfo& info) {
  Backend* backend = findBackend(backendValue(info[0], "backend"));
  const int64_t from = integerValue(info[1], "from", 0, kMaxSafeInteger);
  const int64_t to = integerValue(info[2], "to", 0, kMaxSafeInteger);
  return Napi::Boolean::New(info.Env(), backend != nullptr && backend->peerAccess(from, to));
}

Napi::Value BindTensor(const Napi::CallbackInfo& info) {
  StageBox& box = liveStage(info[0]);
  const TensorBinding binding = parseBinding(info[1]);
  if (box.forwardsInFlight > 0) {
    throw InvalidArgumentError("cannot bind " + binding.name + " while " + std::to_string(box.forwardsInFlight) +
                               " forward call(s) run on the stage");
  }
  box.stage->bindTensor(binding);
  return info.Env().Undefined();
}

Napi::Value MissingTensors(const Napi::CallbackInfo& info) {
  const std::vector<std::string> missing = liveStage(info[0]).stage->missingTensors();
  Napi::Array out = Napi::Array::New(info.Env(), missing.size());
  for (size_t i = 0; i < missing.size(); ++i) out.Set(static_cast<uint32_t>(i), missing[i]);
  return out;
}

ForwardRequest checkedForwardInput(const StageBox& box, const Napi::Value& value) {
  ForwardRequest request = parseForwardInput(value);
  checkForwardRequest(box.spec, request);
  return request;
}

Napi::Promise queueForward(const Napi::CallbackInfo& info, std::vector<ForwardRequest> requests, bool batch) {
  auto* worker = new ForwardWorker(info.Env(), info[0].As<Napi::External<StageBox>>(), std::move(requests), batch);
  const Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

// Never throws: every failure, argument checks included, rejects the returned promise.
Napi::Value Forward(const Napi::CallbackInfo& info) {
  try {
    const StageBox& box = liveStage(info[0]);
    std::vector<ForwardRequest> requests;
    requests.push_back(checkedForwardInput(box, info[1]));
    return queueForward(info, std::move(requests), false);
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

// Never throws, like Forward: a forward whose output hidden states go over a link (the
// sending end) under a tag; resolves to undefined once the send is queued.
Napi::Value ForwardToLink(const Napi::CallbackInfo& info) {
  try {
    const StageBox& box = liveStage(info[0]);
    ForwardRequest request = parseForwardInput(info[1]);
    const Napi::Object output = objectValue(info[2], "output");
    request.outputLink = linkFromHandle(output.Get("link"), "output.link");
    request.outputTag = static_cast<uint64_t>(integerValue(output.Get("tag"), "output.tag", 0, kMaxSafeInteger));
    checkForwardRequest(box.spec, request);
    std::vector<ForwardRequest> requests;
    requests.push_back(std::move(request));
    return queueForward(info, std::move(requests), false);
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

// Never throws, like Forward. Rejects an empty batch and a sequence named twice.
Napi::Value ForwardBatch(const Napi::CallbackInfo& info) {
  try {
    const StageBox& box = liveStage(info[0]);
    if (!info[1].IsArray()) throw InvalidArgumentError("inputs must be an array of ForwardInput");
    const auto inputs = info[1].As<Napi::Array>();
    if (inputs.Length() == 0) throw InvalidArgumentError("inputs is empty");
    std::vector<ForwardRequest> requests;
    std::unordered_set<int64_t> sequences;
    for (uint32_t i = 0; i < inputs.Length(); ++i) {
      const std::string what = "inputs[" + std::to_string(i) + "]: ";
      try {
        requests.push_back(checkedForwardInput(box, inputs.Get(i)));
      } catch (const InvalidArgumentError& error) {
        throw InvalidArgumentError(what + error.what());
      }
      if (!sequences.insert(requests.back().sequence).second) {
        throw InvalidArgumentError(what + "sequence " + std::to_string(requests.back().sequence) +
                                   " appears more than once in one batch");
      }
    }
    return queueForward(info, std::move(requests), true);
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

Napi::Value ReleaseSequence(const Napi::CallbackInfo& info) {
  StageBox& box = liveStage(info[0]);
  box.stage->releaseSequence(integerValue(info[1], "sequence", -kMaxSafeInteger, kMaxSafeInteger));
  return info.Env().Undefined();
}

Napi::Value StageDeviceBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(liveStage(info[0]).stage->deviceBytes()));
}

// Never throws: resolves once every queued weight copy of the stage has landed.
Napi::Value AwaitStageCopies(const Napi::CallbackInfo& info) {
  try {
    std::shared_ptr<Stage> stage = liveStage(info[0]).stage;
    return runAsyncVoid(info.Env(), "paraserve.awaitStageCopies", [stage] { stage->waitForCopies(); }, info[0]);
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

// Never throws: resolves once the stage's kernels ran once on placeholder inputs (Stage::warmUp),
// with a prefill of each prompt length in the optional array info[1].
Napi::Value WarmUpStage(const Napi::CallbackInfo& info) {
  try {
    StageBox& box = liveStage(info[0]);
    if (box.forwardsInFlight > 0) throw InvalidArgumentError("cannot warm up a stage while a forward runs on it");
    std::vector<int64_t> prefillTokens;
    if (info.Length() > 1 && !info[1].IsUndefined()) {
      if (!info[1].IsArray()) throw InvalidArgumentError("prefillTokens must be an array of token counts");
      const Napi::Array counts = info[1].As<Napi::Array>();
      for (uint32_t i = 0; i < counts.Length(); ++i) {
        prefillTokens.push_back(integerValue(counts.Get(i), "prefillTokens[" + std::to_string(i) + "]", 1, kMaxSafeInteger));
      }
    }
    std::shared_ptr<Stage> stage = box.stage;
    return runAsyncVoid(
        info.Env(), "paraserve.warmUpStage", [stage, prefillTokens] { stage->warmUp(prefillTokens); }, info[0]);
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

// Idempotent: disposing twice is not an error, using a disposed stage is (DisposedError).
Napi::Value DisposeStage(const Napi::CallbackInfo& info) {
  unwrapBox(info[0]).stage.reset();
  return info.Env().Undefined();
}

}  // namespace

void registerStageExports(Napi::Env env, Napi::Object exports) {
  exportFunction<PrepareDevice>(env, exports, "prepareDevice");
  exportFunction<CreateStage>(env, exports, "createStage");
  exportFunction<CloneStage>(env, exports, "cloneStage");
  exportFunction<PeerAccess>(env, exports, "peerAccess");
  exportFunction<BindTensor>(env, exports, "bindTensor");
  exportFunction<MissingTensors>(env, exports, "missingTensors");
  exportFunction<Forward>(env, exports, "forward");
  exportFunction<ForwardToLink>(env, exports, "forwardToLink");
  exportFunction<ForwardBatch>(env, exports, "forwardBatch");
  exportFunction<ReleaseSequence>(env, exports, "releaseSequence");
  exportFunction<StageDeviceBytes>(env, exports, "stageDeviceBytes");
  exportFunction<AwaitStageCopies>(env, exports, "awaitStageCopies");
  exportFunction<WarmUpStage>(env, exports, "warmUpStage");
  exportFunction<DisposeStage>(env, exports, "disposeStage");
}

}  // namespace paraserve
