// CUDA backend: device listing and pinned host memory through the CUDA runtime. Every call
// is checked; failures become CudaError (never abort), except where a fallback is the
// documented behaviour (no GPU → no devices; pinning fails → pageable memory).
#ifdef PARASERVE_WITH_CUDA

#include "cuda/CudaBackend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/Errors.h"
#include "cuda/CudaCheck.h"
#include "cuda/CudaStage.h"
#include "cuda/NcclLink.h"

namespace paraserve {

using cuda::check;

namespace {

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

void CudaBackend::prepareDevice(int64_t device) {
  requireDevice(device);
  std::lock_guard<std::mutex> lock(preparedMutex_);
  if (prepared_.count(device) > 0) return;
  cuda::useDevice(static_cast<int>(device));
  PARASERVE_CUDA_CHECK(cudaFree(nullptr));  // creates the primary context
  cublasHandle_t handle = nullptr;
  check(cublasCreate(&handle), "cublasCreate");  // loads cuBLAS for this device; kept warm
  prepared_[device] = handle;
}

bool CudaBackend::peerAccess(int64_t from, int64_t to) {
  requireDevice(from);
  requireDevice(to);
  if (from == to) return false;
  std::lock_guard<std::mutex> lock(peerMutex_);
  const auto known = peers_.find({from, to});
  if (known != peers_.end()) return known->second;
  int possible = 0;
  PARASERVE_CUDA_CHECK(cudaDeviceCanAccessPeer(&possible, static_cast<int>(to), static_cast<int>(from)));
  bool enabled = false;
  if (possible != 0) {
    // Access is enabled from the destination's context, which the clone's copy runs in.
    CurrentDeviceGuard guard;
    cuda::useDevice(static_cast<int>(to));
    const cudaError_t status = cudaDeviceEnablePeerAccess(static_cast<int>(from), 0);
    if (status != cudaSuccess && status != cudaErrorPeerAccessAlreadyEnabled) check(status, "cudaDeviceEnablePeerAccess");
    cudaGetLastError();
    enabled = true;
  }
  peers_[{from, to}] = enabled;
  return enabled;
}

std::unique_ptr<Stage> CudaBackend::createStage(const StageSpec& spec) {
  requireDevice(spec.device);
  return std::make_unique<cuda::CudaStage>(spec);
}

std::vector<uint8_t> CudaBackend::linkUniqueId() {
  ncclUniqueId id;
  const ncclResult_t result = ncclGetUniqueId(&id);
  if (result != ncclSuccess) throw NcclError(std::string("ncclGetUniqueId failed: ") + ncclGetErrorString(result));
  const auto* bytes = reinterpret_cast<const uint8_t*>(id.internal);
  return std::vector<uint8_t>(bytes, bytes + sizeof id.internal);
}

std::shared_ptr<StageLink> CudaBackend::openLink(int64_t device, const std::vector<uint8_t>& id, bool sends,
                                                 double timeoutSeconds) {
  requireDevice(device);
  ncclUniqueId unique;
  if (id.size() != sizeof unique.internal) {
    throw InvalidArgumentError("a link id holds " + std::to_string(sizeof unique.internal) + " bytes, got " +
                               std::to_string(id.size()));
  }
  std::memcpy(unique.internal, id.data(), sizeof unique.internal);
  return std::make_shared<cuda::NcclLink>(static_cast<int>(device), unique, sends, timeoutSeconds);
}

namespace {

// Seconds of one copy of bytes from source to target on a fresh stream, after a warm-up
// copy of up to 64 MiB (so context and DMA setup are not timed).
double timedCopy(void* target, const void* source, uint64_t bytes, cudaMemcpyKind kind) {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  float milliseconds = 0.0f;
  try {
    PARASERVE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    PARASERVE_CUDA_CHECK(cudaEventCreate(&start));
    PARASERVE_CUDA_CHECK(cudaEventCreate(&stop));
    PARASERVE_CUDA_CHECK(cudaMemcpyAsync(target, source, std::min<uint64_t>(bytes, 64ull << 20), kind, stream));
    PARASERVE_CUDA_CHECK(cudaEventRecord(start, stream));
    PARASERVE_CUDA_CHECK(cudaMemcpyAsync(target, source, bytes, kind, stream));
    PARASERVE_CUDA_CHECK(cudaEventRecord(stop, stream));
    PARASERVE_CUDA_CHECK(cudaEventSynchronize(stop));
    PARASERVE_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start, stop));
  } catch (...) {
    if (stop != nullptr) cudaEventDestroy(stop);
    if (start != nullptr) cudaEventDestroy(start);
    if (stream != nullptr) cudaStreamDestroy(stream);
    throw;
  }
  cudaEventDestroy(stop);
  cudaEventDestroy(start);
  cudaStreamDestroy(stream);
  return milliseconds / 1000.0;
}

}  // namespace

double CudaBackend::measureHostToDevice(const HostBuffer& buffer, int64_t device) {
  requireDevice(device);
  cuda::useDevice(static_cast<int>(device));
  cuda::DeviceBuffer target(buffer.bytes(), "host-to-device benchmark", nullptr);
  PARASERVE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  return timedCopy(target.data(), buffer.data(), buffer.bytes(), cudaMemcpyHostToDevice);
}

double CudaBackend::measureDeviceMemory(int64_t device, uint64_t bytes) {
  requireDevice(device);
  cuda::useDevice(static_cast<int>(device));
  cuda::DeviceBuffer source(bytes, "device memory benchmark (source)", nullptr);
  cuda::DeviceBuffer target(bytes, "device memory benchmark (target)", nullptr);
  PARASERVE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  return timedCopy(target.data(), source.data(), bytes, cudaMemcpyDeviceToDevice);
}

void CudaBackend::requireDevice(int64_t device) {
  const int count = deviceCount();
  if (device < 0 || device >= count) {
    throw InvalidArgumentError("CUDA device " + std::to_string(device) + " does not exist (" +
                               std::to_string(count) + " device(s) present)");
  }
}

}  // namespace paraserve

#endif  // PARASERVE_WITH_CUDA
