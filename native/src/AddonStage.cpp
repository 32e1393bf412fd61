// Stage exports (see AddonStage.h). Everything but forward runs synchronously on the JS
// thread. forward validates its input here, then runs on a libuv worker thread through
// ForwardWorker, which pins the handle (a reference) and shares ownership of the stage, so
// disposeStage during a forward frees the stage only when that forward ends.
#include "AddonStage.h"

#include <memory>
#include <utility>

#include "AddonErrors.h"
#include "AddonHostBuffer.h"
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
  if (!value.IsExternal() || !value.As<Napi::External<StageBox>>().CheckTypeTag(&kStageTag)) {
    throw InvalidArgumentError("stage must be a StageHandle from createStage");
  }
  return *value.As<Napi::External<StageBox>>().Data();
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
                               (type == napi_int32_array ? "Int32Array" : "Float32Array") + " or null");
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
  const bool hasHidden = copyTypedArray(o.Get("hidden"), napi_float32_array, "input.hidden", request.hidden);
  if (hasTokens == hasHidden) throw InvalidArgumentError("exactly one of input.tokens and input.hidden must be set");
  return request;
}

class ForwardWorker final : public Napi::AsyncWorker {
 public:
  ForwardWorker(Napi::Env env, const Napi::External<StageBox>& handle, ForwardRequest request)
      : Napi::AsyncWorker(env, "paraserve.forward"),
        deferred_(Napi::Promise::Deferred::New(env)),
        pin_(Napi::Persistent(handle)),
        box_(handle.Data()),
        stage_(box_->stage),
        request_(std::move(request)) {
    ++box_->forwardsInFlight;
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      output_ = stage_->forward(request_);
    } catch (...) {
      const CaughtError caught = describeCurrentException();
      errorName_ = caught.name;
      SetError(caught.message);
    }
  }

  void OnOK() override {
    --box_->forwardsInFlight;
    try {
      auto result = Napi::Float32Array::New(Env(), output_.size());
      std::copy(output_.begin(), output_.end(), result.Data());
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
  ForwardRequest request_;
  std::vector<float> output_;
  const char* errorName_ = "NativeError";
};

// Runs Backend::prepareDevice on a libuv worker thread.
class PrepareDeviceWorker final : public Napi::AsyncWorker {
 public:
  PrepareDeviceWorker(Napi::Env env, Backend* backend, int64_t device)
      : Napi::AsyncWorker(env, "paraserve.prepareDevice"),
        deferred_(Napi::Promise::Deferred::New(env)),
        backend_(backend),
        device_(device) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      backend_->prepareDevice(device_);
    } catch (...) {
      const CaughtError caught = describeCurrentException();
      errorName_ = caught.name;
      SetError(caught.message);
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& error) override {
    deferred_.Reject(namedError(Env(), errorName_, error.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Backend* backend_;
  int64_t device_;
  const char* errorName_ = "NativeError";
};

// Rejects the promise of a function that never throws with the current exception.
Napi::Promise rejectedPromise(Napi::Env env) {
  auto deferred = Napi::Promise::Deferred::New(env);
  try {
    throw;
  } catch (const Napi::Error& error) {
    deferred.Reject(error.Value());
  } catch (...) {
    const CaughtError caught = describeCurrentException();
    deferred.Reject(namedError(env, caught.name, caught.message).Value());
  }
  return deferred.Promise();
}

// Never throws: every failure rejects the returned promise.
Napi::Value PrepareDevice(const Napi::CallbackInfo& info) {
  try {
    const BackendKind kind = backendValue(info[0], "backend");
    const int64_t device = integerValue(info[1], "device", 0, kMaxSafeInteger);
    Backend* backend = findBackend(kind);
    if (backend == nullptr) {
      throw NotImplementedError(std::string("the cuda backend is not compiled into this binary: ") +
                                cudaSkippedReason());
    }
    auto* worker = new PrepareDeviceWorker(info.Env(), backend, device);
    const Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

Napi::Value CreateStage(const Napi::CallbackInfo& info) {
  StageSpec spec = parseStageSpec(info[0]);
  validateStageSpec(spec);
  Backend* backend = findBackend(spec.backend);
  if (backend == nullptr) {
    throw NotImplementedError(std::string("the cuda backend is not compiled into this binary: ") + cudaSkippedReason());
  }
  auto box = std::make_unique<StageBox>();
  box->stage = backend->createStage(spec);
  box->spec = spec;
  auto handle = Napi::External<StageBox>::New(info.Env(), box.get(), [](Napi::Env, StageBox* owned) { delete owned; });
  box.release();
  handle.TypeTag(&kStageTag);
  return handle;
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

// Never throws: every failure, argument checks included, rejects the returned promise.
Napi::Value Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    StageBox& box = liveStage(info[0]);
    ForwardRequest request = parseForwardInput(info[1]);
    checkForwardRequest(box.spec, request);
    auto* worker = new ForwardWorker(env, info[0].As<Napi::External<StageBox>>(), std::move(request));
    const Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
  } catch (...) {
    return rejectedPromise(env);
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

// Idempotent: disposing twice is not an error, using a disposed stage is (DisposedError).
Napi::Value DisposeStage(const Napi::CallbackInfo& info) {
  unwrapBox(info[0]).stage.reset();
  return info.Env().Undefined();
}

}  // namespace

void registerStageExports(Napi::Env env, Napi::Object exports) {
  exportFunction<PrepareDevice>(env, exports, "prepareDevice");
  exportFunction<CreateStage>(env, exports, "createStage");
  exportFunction<BindTensor>(env, exports, "bindTensor");
  exportFunction<MissingTensors>(env, exports, "missingTensors");
  exportFunction<Forward>(env, exports, "forward");
  exportFunction<ReleaseSequence>(env, exports, "releaseSequence");
  exportFunction<StageDeviceBytes>(env, exports, "stageDeviceBytes");
  exportFunction<DisposeStage>(env, exports, "disposeStage");
}

}  // namespace paraserve
