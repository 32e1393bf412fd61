// JS face of the copy baselines benchmarks compare against: measureHostToDevice and
// measureDeviceMemory (see Backend.h).
#pragma once

#include <napi.h>

namespace paraserve {

void registerDiagnosticsExports(Napi::Env env, Napi::Object exports);

}  // namespace paraserve
