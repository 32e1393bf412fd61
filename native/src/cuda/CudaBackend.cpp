// CUDA backend: device listing and pinned host memory through the CUDA runtime. Every call
// is checked; failures become CudaError (never abort), except where a fallback is the
// documented behaviour (no GPU → no devices; pinning fails → pageable memory).
#ifdef PARASERVE_WITH_CUDA

#include "cuda/CudaBackend.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "core/Errors.h"

namespace paraserve {

namespace {

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw CudaError(std::string(call) + " failed: " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
                    ")");
  }
}

#define PARASERVE_CUDA_CHECK(call) check((call), #call)

// Device count, 0 when there is no GPU or no usable driver (a CPU-only host running a
// CUDA-enabled binary).
int deviceCount() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver) {
    cudaGetLastError();
    return 0;
  }
  check(status, "cudaGetDeviceCount");
  return count;
}

// Restores the calling thread's current device when a query switched it.
class CurrentDeviceGuard {
 public:
  CurrentDeviceGuard() { PARASERVE_CUDA_CHECK(cudaGetDevice(&previous_)); }
  ~CurrentDeviceGuard() {
    const cudaError_t status = cudaSetDevice(previous_);
    if (status != cudaSuccess) {
      std::fprintf(stderr, "paraserve native: cudaSetDevice(%d) failed restoring the device: %s\n", previous_,
                   cudaGetErrorString(status));
    }
  }
  CurrentDeviceGuard(const CurrentDeviceGuard&) = delete;
  CurrentDeviceGuard& operator=(const CurrentDeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

void freePinned(void* data) {
  const cudaError_t status = cudaFreeHost(data);
  if (status != cudaSuccess) {
    std::fprintf(stderr, "paraserve native: cudaFreeHost failed: %s\n", cudaGetErrorString(status));
  }
}

}  // namespace

std::vector<DeviceInfo> CudaBackend::listDevices() {
  const int count = deviceCount();
  std::vector<DeviceInfo> devices;
  if (count == 0) return devices;
  CurrentDeviceGuard guard;
  for (int index = 0; index < count; ++index) {
    cudaDeviceProp properties{};
    PARASERVE_CUDA_CHECK(cudaGetDeviceProperties(&properties, index));
    PARASERVE_CUDA_CHECK(cudaSetDevice(index));
    size_t freeBytes = 0;
    size_t totalBytes = 0;
    PARASERVE_CUDA_CHECK(cudaMemGetInfo(&freeBytes, &totalBytes));
    DeviceInfo device;
    device.index = index;
    device.kind = BackendKind::Cuda;
    device.name = properties.name;
    device.totalBytes = totalBytes;
    device.freeBytes = freeBytes;
    devices.push_back(device);
  }
  return devices;
}

std::unique_ptr<HostBuffer> CudaBackend::allocHost(uint64_t bytes, bool pinned) {
  if (pinned && deviceCount() > 0) {
    void* data = nullptr;
    const cudaError_t status = cudaHostAlloc(&data, static_cast<size_t>(bytes), cudaHostAllocPortable);
    if (status == cudaSuccess) {
      try {
        return std::make_unique<HostBuffer>(data, bytes, true, freePinned);
      } catch (...) {
        freePinned(data);
        throw;
      }
    }
    cudaGetLastError();
    std::fprintf(stderr, "paraserve native: cudaHostAlloc of %llu bytes failed (%s); using pageable memory\n",
                 static_cast<unsigned long long>(bytes), cudaGetErrorString(status));
  }
  return HostBuffer::allocatePageable(bytes);
}

std::unique_ptr<Stage> CudaBackend::createStage(const StageSpec&) {
  throw NotImplementedError("CUDA stage execution is not implemented yet (issue 3)");
}

}  // namespace paraserve

#endif  // PARASERVE_WITH_CUDA
