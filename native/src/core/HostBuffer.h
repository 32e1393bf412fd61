// Host memory owned by the addon: the staging area checkpoint bytes are fetched into and
// tensors are bound from. Pinned (page-locked, from the CUDA backend) where possible so
// host-to-device copies can run asynchronously; pageable otherwise.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

namespace paraserve {

class HostBuffer {
 public:
  // Frees memory obtained from whichever allocator made it (free, cudaFreeHost, a pool).
  using Release = std::function<void(void* data)>;

  HostBuffer(void* data, uint64_t bytes, bool pinned, Release release)
      : data_(static_cast<uint8_t*>(data)), bytes_(bytes), pinned_(pinned), release_(std::move(release)) {}
  ~HostBuffer() { release_(data_); }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t bytes() const { return bytes_; }
  bool pinned() const { return pinned_; }

  // 64-byte aligned pageable memory; throws OutOfMemoryError.
  static std::unique_ptr<HostBuffer> allocatePageable(uint64_t bytes);

 private:
  uint8_t* data_;
  uint64_t bytes_;
  bool pinned_;
  Release release_;
};

}  // namespace paraserve
