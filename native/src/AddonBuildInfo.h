// JS face of what this binary can do: buildInfo (backends compiled in, which can run
// stages, why CUDA was left out) and listDevices.
#pragma once

#include <napi.h>

namespace paraserve {

void registerBuildInfoExports(Napi::Env env, Napi::Object exports);

}  // namespace paraserve
