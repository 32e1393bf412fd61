// Pageable host buffers: the CPU backend's (and the CUDA fallback's) allocation.
#include "core/HostBuffer.h"

#include <cstdlib>
#include <string>

#include "core/Errors.h"

namespace paraserve {

std::unique_ptr<HostBuffer> HostBuffer::allocatePageable(uint64_t bytes) {
  void* data = nullptr;
  if (posix_memalign(&data, 64, static_cast<size_t>(bytes)) != 0 || data == nullptr) {
    throw OutOfMemoryError("could not allocate a host buffer of " + std::to_string(bytes) + " bytes");
  }
  try {
    return std::make_unique<HostBuffer>(data, bytes, false, [](void* p) { std::free(p); });
  } catch (...) {
    std::free(data);
    throw;
  }
}

}  // namespace paraserve
