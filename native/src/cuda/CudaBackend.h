// The CUDA backend, compiled only where the build found the CUDA toolkit, cuBLAS and NCCL
// (PARASERVE_WITH_CUDA, see CMakeLists.txt): device listing, pinned host memory, and stages
// that run the forward pass on a GPU (cuda/CudaStage.h).
#pragma once

#ifdef PARASERVE_WITH_CUDA

#include <cublas_v2.h>

#include <map>
#include <utility>
#include <mutex>

#include "core/Backend.h"

namespace paraserve {

class CudaBackend final : public Backend {
 public:
  BackendKind kind() const override { return BackendKind::Cuda; }
  bool canExecuteStages() const override { return true; }
  // [] when no GPU or no driver is present; CudaError on any other failure.
  std::vector<DeviceInfo> listDevices() override;
  // cudaHostAlloc when pinned is asked for and a GPU is present; pageable memory, with a
  // log line, when pinning fails.
  std::unique_ptr<HostBuffer> allocHost(uint64_t bytes, bool pinned) override;
  // Timed with CUDA events on a stream of their own, after a warm-up copy.
  double measureHostToDevice(const HostBuffer& buffer, int64_t device) override;
  double measureDeviceMemory(int64_t device, uint64_t bytes) override;
  // cudaDeviceCanAccessPeer; enables the access (once per pair) when it is possible.
  bool peerAccess(int64_t from, int64_t to) override;
  // Creates the device's primary context and loads cuBLAS once per device.
  void prepareDevice(int64_t device) override;
  // InvalidArgumentError for a device index that does not exist.
  std::unique_ptr<Stage> createStage(const StageSpec& spec) override;
  bool hasLinks() const override { return true; }
  // ncclGetUniqueId: NCCL_UNIQUE_ID_BYTES bytes; its bootstrap root lives in this process.
  std::vector<uint8_t> linkUniqueId() override;
  // A two-rank NCCL communicator (cuda/NcclLink.h): rank 0 sends, rank 1 receives.
  std::shared_ptr<StageLink> openLink(int64_t device, const std::vector<uint8_t>& id, bool sends,
                                      double timeoutSeconds) override;

 private:
  static void requireDevice(int64_t device);

  std::mutex preparedMutex_;
  std::map<int64_t, cublasHandle_t> prepared_;  // warm handles, never used for compute
  std::mutex peerMutex_;
  std::map<std::pair<int64_t, int64_t>, bool> peers_;  // (from, to) → peer access enabled
};

}  // namespace paraserve

#endif  // PARASERVE_WITH_CUDA
