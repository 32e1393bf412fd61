// JS face of host buffers: allocHostBuffer, hostBufferInfo, writeHostBuffer,
// freeHostBuffer. A HostBufferHandle is an External tagged as ours, owning the buffer
// until freeHostBuffer (or garbage collection of a forgotten handle).
#pragma once

#include <napi.h>

#include <string>

#include "core/HostBuffer.h"

namespace paraserve {

void registerHostBufferExports(Napi::Env env, Napi::Object exports);

// The live buffer behind a handle: InvalidArgumentError for anything that is not a
// HostBufferHandle, DisposedError once freed.
const HostBuffer& unwrapHostBuffer(const Napi::Value& value, const std::string& what);

}  // namespace paraserve
