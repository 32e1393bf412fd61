// Which backends this binary holds, as the build decided (CMakeLists.txt), and where host
// buffers come from. The one place that knows whether CUDA was compiled in.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/Backend.h"

namespace paraserve {

// The backend of that kind, or nullptr when it is not compiled into this binary.
Backend* findBackend(BackendKind kind);
// The backend of that kind; NotImplementedError saying why the build left it out otherwise.
Backend& requireBackend(BackendKind kind);
std::vector<BackendKind> compiledBackends();
// Compiled backends that can execute stages now.
std::vector<BackendKind> stageBackends();
// Why the build left CUDA out; nullptr when it is compiled in.
const char* cudaSkippedReason();
// From the host pool when one is configured (HostPool.h; pinned is then the pool's), else
// allocateUnpooledHostBuffer.
std::unique_ptr<HostBuffer> allocateHostBuffer(uint64_t bytes, bool pinned);
// Pinned through the CUDA backend when it is compiled in and pinning works, else pageable.
std::unique_ptr<HostBuffer> allocateUnpooledHostBuffer(uint64_t bytes, bool pinned);

}  // namespace paraserve
