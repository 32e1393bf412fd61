// Turning CUDA runtime and cuBLAS failures into named C++ errors (core/Errors.h), so that
// nothing in the CUDA backend aborts the process: out-of-memory becomes OutOfMemoryError,
// every other failure CudaError naming the call that failed.
#pragma once

#ifdef PARASERVE_WITH_CUDA

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "core/Errors.h"

namespace paraserve::cuda {

inline void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clears a non-sticky error so the next call starts clean
  const std::string message =
      std::string(what) + " failed: " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
  if (status == cudaErrorMemoryAllocation) throw OutOfMemoryError(message);
  throw CudaError(message);
}

inline void check(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const std::string message = std::string(what) + " failed: " + cublasGetStatusString(status);
  if (status == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemoryError(message);
  throw CudaError(message);
}

// Makes device the calling thread's current device (libuv worker threads serve every stage).
inline void useDevice(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

// Device memory owned by one object; freed on destruction (failures there are only logged:
// a destructor cannot report them). Memory comes from the device's stream-ordered pool,
// which keeps freed memory for the next allocation instead of returning it to the driver:
// a model swapped out and another swapped in reuse the same memory without a cudaMalloc
// on the request's path. Usable on `stream` at once, on other streams once ordered after
// it; the owner must have synchronised every stream that used it before destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(uint64_t bytes, const char* what, cudaStream_t stream);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t bytes() const { return bytes_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t bytes_ = 0;
};

}  // namespace paraserve::cuda

#endif  // PARASERVE_WITH_CUDA
