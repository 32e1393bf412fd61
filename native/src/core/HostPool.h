// The worker's host cache memory: one region allocated (and pinned, where possible) once at
// worker start, because pinning is slow (≈2 s for 4 GiB) and must not sit on a request's
// path. Host buffers are carved out of it first-fit and return their range when freed; a
// buffer keeps the pool alive, so reconfiguring never frees memory still in use.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "core/HostBuffer.h"

namespace paraserve {

struct HostPoolInfo {
  uint64_t bytes = 0;
  uint64_t freeBytes = 0;
  uint64_t largestFreeBytes = 0;
  bool pinned = false;
};

class HostPool : public std::enable_shared_from_this<HostPool> {
 public:
  explicit HostPool(std::unique_ptr<HostBuffer> region);
  // A buffer of at least bytes inside the pool; OutOfMemoryError (saying how much is free)
  // when no free range is large enough.
  std::unique_ptr<HostBuffer> allocate(uint64_t bytes);
  HostPoolInfo info() const;

 private:
  void release(uint64_t offset, uint64_t bytes);

  std::unique_ptr<HostBuffer> region_;
  mutable std::mutex mutex_;
  std::map<uint64_t, uint64_t> free_;  // offset -> length, non-adjacent ranges
};

// Replaces the process-wide pool (allocateHostBuffer draws from it from now on).
HostPoolInfo configureHostPool(uint64_t bytes, bool pinned);
// The current pool, or nullptr when none was configured.
std::shared_ptr<HostPool> currentHostPool();

}  // namespace paraserve
