// Turns C++ exceptions into named JS errors (see AddonErrors.h).
#include "AddonErrors.h"

#include "AddonAsync.h"

#include <new>

#include "core/Errors.h"

namespace paraserve {

CaughtError describeCurrentException() noexcept {
  try {
    throw;
  } catch (const NativeError& error) {
    return {error.name(), error.what()};
  } catch (const std::bad_alloc&) {
    return {"OutOfMemoryError", "out of host memory"};
  } catch (const std::exception& error) {
    return {"NativeError", error.what()};
  } catch (...) {
    return {"NativeError", "unknown native exception"};
  }
}

Napi::Error namedError(Napi::Env env, const char* name, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Value().Set("name", Napi::String::New(env, name));
  return error;
}

Napi::Promise rejectedPromise(Napi::Env env) {
  auto deferred = Napi::Promise::Deferred::New(env);
  try {
    throw;
  } catch (const Napi::Error& error) {
    deferred.Reject(error.Value());
  } catch (...) {
    const CaughtError caught = describeCurrentException();
    deferred.Reject(namedError(env, caught.name, caught.message).Value());
  }
  return deferred.Promise();
}

}  // namespace paraserve
