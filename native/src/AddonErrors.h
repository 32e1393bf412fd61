// The N-API error boundary. node-addon-api only turns its own Napi::Error into a JS
// exception; any other C++ exception escaping a callback would terminate the process. So
// every export is registered through exportFunction, which catches everything and throws
// a JS Error whose `name` is the C++ error's (core/Errors.h) — worker/native/errors.ts maps
// those names to TS classes. AsyncWorkers use describeCurrentException the same way.
#pragma once

#include <napi.h>

#include <string>

namespace paraserve {

struct CaughtError {
  const char* name;  // static string: "InvalidArgumentError", "OutOfMemoryError", ...
  std::string message;
};

// Classifies the exception being handled; call only inside a catch block.
CaughtError describeCurrentException() noexcept;

// A JS Error with the given name property.
Napi::Error namedError(Napi::Env env, const char* name, const std::string& message);

template <Napi::Value (*Body)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  try {
    return Body(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    const CaughtError caught = describeCurrentException();
    throw namedError(info.Env(), caught.name, caught.message);
  }
}

template <Napi::Value (*Body)(const Napi::CallbackInfo&)>
void exportFunction(Napi::Env env, Napi::Object exports, const char* name) {
  exports.Set(name, Napi::Function::New(env, guarded<Body>, name));
}

}  // namespace paraserve
