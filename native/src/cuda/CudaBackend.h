// The CUDA backend, compiled only where the build found the CUDA toolkit, cuBLAS and NCCL
// (PARASERVE_WITH_CUDA, see CMakeLists.txt). For now it lists devices and pins host
// buffers; stage execution is issue 3, so stageBackends() does not list it yet.
#pragma once

#ifdef PARASERVE_WITH_CUDA

#include "core/Backend.h"

namespace paraserve {

class CudaBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::Cuda; }
  bool canExecuteStages() const override { return false; }
  // [] when no GPU or no driver is present; CudaError on any other failure.
  std::vector<DeviceInfo> listDevices() override;
  // cudaHostAlloc when pinned is asked for and a GPU is present; pageable memory, with a
  // log line, when pinning fails.
  std::unique_ptr<HostBuffer> allocHost(uint64_t bytes, bool pinned) override;
  // Throws NotImplementedError until CUDA stage execution lands (issue 3).
  std::unique_ptr<Stage> createStage(const StageSpec& spec) override;
};

}  // namespace paraserve

#endif  // PARASERVE_WITH_CUDA
