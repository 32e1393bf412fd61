// The backend registry: one static instance per compiled backend.
#include "core/Backends.h"

#include "core/HostPool.h"
#include "cpu/CpuBackend.h"
#ifdef PARASERVE_WITH_CUDA
#include "cuda/CudaBackend.h"
#endif

namespace paraserve {

const char* backendName(BackendKind kind) { return kind == BackendKind::Cpu ? "cpu" : "cuda"; }

namespace {

CpuBackend& cpuBackend() {
  static CpuBackend backend;
  return backend;
}

#ifdef PARASERVE_WITH_CUDA
CudaBackend& cudaBackend() {
  static CudaBackend backend;
  return backend;
}
#endif

}  // namespace

Backend* findBackend(BackendKind kind) {
  if (kind == BackendKind::Cpu) return &cpuBackend();
#ifdef PARASERVE_WITH_CUDA
  return &cudaBackend();
#else
  return nullptr;
#endif
}

Backend& requireBackend(BackendKind kind) {
  Backend* backend = findBackend(kind);
  if (backend == nullptr) {
    throw NotImplementedError(std::string("the cuda backend is not compiled into this binary: ") + cudaSkippedReason());
  }
  return *backend;
}

std::vector<BackendKind> compiledBackends() {
#ifdef PARASERVE_WITH_CUDA
  return {BackendKind::Cpu, BackendKind::Cuda};
#else
  return {BackendKind::Cpu};
#endif
}

std::vector<BackendKind> stageBackends() {
  std::vector<BackendKind> out;
  for (BackendKind kind : compiledBackends()) {
    if (findBackend(kind)->canExecuteStages()) out.push_back(kind);
  }
  return out;
}

const char* cudaSkippedReason() {
#ifdef PARASERVE_WITH_CUDA
  return nullptr;
#else
  return PARASERVE_CUDA_SKIPPED_REASON;
#endif
}

std::unique_ptr<HostBuffer> allocateHostBuffer(uint64_t bytes, bool pinned) {
  if (const std::shared_ptr<HostPool> pool = currentHostPool()) return pool->allocate(bytes);
  return allocateUnpooledHostBuffer(bytes, pinned);
}

std::unique_ptr<HostBuffer> allocateUnpooledHostBuffer(uint64_t bytes, bool pinned) {
#ifdef PARASERVE_WITH_CUDA
  return cudaBackend().allocHost(bytes, pinned);
#else
  return cpuBackend().allocHost(bytes, pinned);
#endif
}

}  // namespace paraserve
