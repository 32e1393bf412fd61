// First-fit allocation inside the host pool (HostPool.h), with neighbours merged on free.
#include "core/HostPool.h"

#include <string>

#include "core/Backends.h"
#include "core/Errors.h"

namespace paraserve {

namespace {

// Page alignment: every buffer starts on its own page, as DMA engines like.
constexpr uint64_t kAlignment = 4096;

uint64_t alignUp(uint64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

std::mutex poolMutex;
std::shared_ptr<HostPool> pool;

}  // namespace

HostPool::HostPool(std::unique_ptr<HostBuffer> region) : region_(std::move(region)) {
  const uint64_t usable = region_->bytes() / kAlignment * kAlignment;
  if (usable > 0) free_[0] = usable;
}

std::unique_ptr<HostBuffer> HostPool::allocate(uint64_t bytes) {
  const uint64_t length = alignUp(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < length) continue;
    const uint64_t offset = it->first;
    const uint64_t remaining = it->second - length;
    free_.erase(it);
    if (remaining > 0) free_[offset + length] = remaining;
    std::shared_ptr<HostPool> self = shared_from_this();
    return std::make_unique<HostBuffer>(region_->data() + offset, bytes, region_->pinned(),
                                        [self, offset, length](void*) { self->release(offset, length); });
  }
  uint64_t freeBytes = 0;
  for (const auto& [offset, size] : free_) freeBytes += size;
  throw OutOfMemoryError("the host pool cannot hold " + std::to_string(bytes) + " more bytes (" +
                         std::to_string(freeBytes) + " of " + std::to_string(region_->bytes()) +
                         " free, fragmented into " + std::to_string(free_.size()) + " ranges)");
}

void HostPool::release(uint64_t offset, uint64_t length) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && offset + length == next->first) {
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto previous = std::prev(next);
    if (previous->first + previous->second == offset) {
      previous->second += length;
      return;
    }
  }
  free_[offset] = length;
}

HostPoolInfo HostPool::info() const {
  std::lock_guard<std::mutex> lock(mutex_);
  HostPoolInfo out;
  out.bytes = region_->bytes();
  out.pinned = region_->pinned();
  for (const auto& [offset, size] : free_) {
    out.freeBytes += size;
    if (size > out.largestFreeBytes) out.largestFreeBytes = size;
  }
  return out;
}

HostPoolInfo configureHostPool(uint64_t bytes, bool pinned) {
  auto next = std::make_shared<HostPool>(allocateUnpooledHostBuffer(bytes, pinned));
  std::lock_guard<std::mutex> lock(poolMutex);
  pool = next;
  return pool->info();
}

std::shared_ptr<HostPool> currentHostPool() {
  std::lock_guard<std::mutex> lock(poolMutex);
  return pool;
}

}  // namespace paraserve
