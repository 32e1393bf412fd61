// buildInfo and listDevices exports (see AddonBuildInfo.h).
#include "AddonBuildInfo.h"

#include "AddonErrors.h"
#include "AddonValues.h"
#include "core/Backends.h"

namespace paraserve {

namespace {

Napi::Array backendNames(Napi::Env env, const std::vector<BackendKind>& kinds) {
  Napi::Array out = Napi::Array::New(env, kinds.size());
  for (size_t i = 0; i < kinds.size(); ++i) out.Set(static_cast<uint32_t>(i), backendName(kinds[i]));
  return out;
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("backends", backendNames(env, compiledBackends()));
  out.Set("stageBackends", backendNames(env, stageBackends()));
  const char* reason = cudaSkippedReason();
  out.Set("cudaSkippedReason", reason == nullptr ? env.Null() : Napi::String::New(env, reason));
  out.Set("version", PARASERVE_VERSION);
  return out;
}

Napi::Value ListDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Backend* backend = findBackend(backendValue(info[0], "backend"));
  const std::vector<DeviceInfo> devices = backend == nullptr ? std::vector<DeviceInfo>{} : backend->listDevices();
  Napi::Array out = Napi::Array::New(env, devices.size());
  for (size_t i = 0; i < devices.size(); ++i) {
    const DeviceInfo& device = devices[i];
    Napi::Object entry = Napi::Object::New(env);
    entry.Set("index", Napi::Number::New(env, static_cast<double>(device.index)));
    entry.Set("kind", backendName(device.kind));
    entry.Set("name", device.name);
    entry.Set("totalBytes", Napi::Number::New(env, static_cast<double>(device.totalBytes)));
    entry.Set("freeBytes", Napi::Number::New(env, static_cast<double>(device.freeBytes)));
    out.Set(static_cast<uint32_t>(i), entry);
  }
  return out;
}

}  // namespace

void registerBuildInfoExports(Napi::Env env, Napi::Object exports) {
  exportFunction<BuildInfo>(env, exports, "buildInfo");
  exportFunction<ListDevices>(env, exports, "listDevices");
}

}  // namespace paraserve
