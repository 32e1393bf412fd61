// Named C++ exceptions of the native core. The N-API layer turns each into a JS Error whose
// `name` is the one given here, and worker/native/errors.ts maps that name to a TS class,
// so the names below are part of the contract with errors.ts. Nothing in the addon may
// abort or exit: every failure is one of these, thrown and caught at the N-API boundary.
#pragma once

#include <stdexcept>
#include <string>

namespace paraserve {

class NativeError : public std::runtime_error {
 public:
  NativeError(const char* name, const std::string& message) : std::runtime_error(message), name_(name) {}
  const char* name() const noexcept { return name_; }

 private:
  const char* name_;
};

// A caller passed something the interface does not accept (shape, dtype, range, state).
struct InvalidArgumentError : NativeError {
  explicit InvalidArgumentError(const std::string& message) : NativeError("InvalidArgumentError", message) {}
};

// A handle was used after dispose/free.
struct DisposedError : NativeError {
  explicit DisposedError(const std::string& message) : NativeError("DisposedError", message) {}
};

// The operation exists in the interface but this backend cannot do it yet.
struct NotImplementedError : NativeError {
  explicit NotImplementedError(const std::string& message) : NativeError("NotImplementedError", message) {}
};

struct OutOfMemoryError : NativeError {
  explicit OutOfMemoryError(const std::string& message) : NativeError("OutOfMemoryError", message) {}
};

// A CUDA runtime or cuBLAS call failed; the message names the call and the CUDA error.
struct CudaError : NativeError {
  explicit CudaError(const std::string& message) : NativeError("CudaError", message) {}
};

struct NcclError : NativeError {
  explicit NcclError(const std::string& message) : NativeError("NcclError", message) {}
};

}  // namespace paraserve
