// The CPU backend: runs stages everywhere (tests, CI, laptops, GPU-less workers). One
// device, index 0: the host's cores and memory.
#pragma once

#include "core/Backend.h"

namespace paraserve {

class CpuBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::Cpu; }
  bool canExecuteStages() const override { return true; }
  std::vector<DeviceInfo> listDevices() override;
  // Always pageable: there is no device to pin for.
  std::unique_ptr<HostBuffer> allocHost(uint64_t bytes, bool pinned) override;
  // memcpy into (or within) host memory: the CPU's "device" is host memory.
  double measureHostToDevice(const HostBuffer& buffer, int64_t device) override;
  double measureDeviceMemory(int64_t device, uint64_t bytes) override;
  std::unique_ptr<Stage> createStage(const StageSpec& spec) override;
};

}  // namespace paraserve
