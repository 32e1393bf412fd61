// JS face of host buffers and the host pool: allocHostBuffer, hostBufferInfo,
// writeHostBuffer, copyHostBuffer, freeHostBuffer, configureHostPool, hostPoolInfo. A HostBufferHandle is an External tagged as ours, owning the buffer
// until freeHostBuffer (or garbage collection of a forgotten handle).
#pragma once

#include <napi.h>

#include <memory>
#include <string>

#include "core/HostBuffer.h"

namespace paraserve {

void registerHostBufferExports(Napi::Env env, Napi::Object exports);

// The live buffer behind a handle: InvalidArgumentError for anything that is not a
// HostBufferHandle, DisposedError once freed.
const HostBuffer& unwrapHostBuffer(const Napi::Value& value, const std::string& what);
// The same buffer with shared ownership, for bindings that may outlive the handle's buffer.
std::shared_ptr<const HostBuffer> sharedHostBuffer(const Napi::Value& value, const std::string& what);

}  // namespace paraserve
