// Copy baselines for benchmarks (see AddonDiagnostics.h); they run on a worker thread.
#include "AddonDiagnostics.h"

#include <memory>

#include "AddonAsync.h"
#include "AddonHostBuffer.h"
#include "AddonValues.h"
#include "core/Backends.h"
#include "core/Errors.h"

namespace paraserve {

namespace {

Backend& compiledBackend(const Napi::Value& value) { return requireBackend(backendValue(value, "backend")); }

Napi::Value seconds(Napi::Env env, double& value) { return Napi::Number::New(env, value); }

Napi::Value MeasureHostToDevice(const Napi::CallbackInfo& info) {
  try {
    Backend& backend = compiledBackend(info[0]);
    std::shared_ptr<const HostBuffer> buffer = sharedHostBuffer(info[1], "buffer");
    const int64_t device = integerValue(info[2], "device", 0, kMaxSafeInteger);
    return runAsync<double>(
        info.Env(), "paraserve.measureHostToDevice",
        [&backend, buffer, device] { return backend.measureHostToDevice(*buffer, device); }, seconds);
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

Napi::Value MeasureDeviceMemory(const Napi::CallbackInfo& info) {
  try {
    Backend& backend = compiledBackend(info[0]);
    const int64_t device = integerValue(info[1], "device", 0, kMaxSafeInteger);
    const int64_t bytes = integerValue(info[2], "bytes", 1, kMaxSafeInteger);
    return runAsync<double>(
        info.Env(), "paraserve.measureDeviceMemory",
        [&backend, device, bytes] { return backend.measureDeviceMemory(device, static_cast<uint64_t>(bytes)); },
        seconds);
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

}  // namespace

void registerDiagnosticsExports(Napi::Env env, Napi::Object exports) {
  exportFunction<MeasureHostToDevice>(env, exports, "measureHostToDevice");
  exportFunction<MeasureDeviceMemory>(env, exports, "measureDeviceMemory");
}

}  // namespace paraserve
