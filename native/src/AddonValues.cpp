// JS → C++ argument conversion (see AddonValues.h).
#include "AddonValues.h"

#include <cmath>

#include "core/Errors.h"

namespace paraserve {

Napi::Object objectValue(const Napi::Value& value, const std::string& what) {
  if (!value.IsObject() || value.IsArray()) throw InvalidArgumentError(what + " must be an object");
  return value.As<Napi::Object>();
}

int64_t integerValue(const Napi::Value& value, const std::string& what, int64_t min, int64_t max) {
  if (!value.IsNumber()) throw InvalidArgumentError(what + " must be a number");
  const double number = value.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(number) || std::trunc(number) != number || number < static_cast<double>(min) ||
      number > static_cast<double>(max)) {
    throw InvalidArgumentError(what + " must be an integer in [" + std::to_string(min) + ", " + std::to_string(max) +
                               "], got " + value.ToString().Utf8Value());
  }
  return static_cast<int64_t>(number);
}

double numberValue(const Napi::Value& value, const std::string& what) {
  if (!value.IsNumber()) throw InvalidArgumentError(what + " must be a number");
  return value.As<Napi::Number>().DoubleValue();
}

bool boolValue(const Napi::Value& value, const std::string& what) {
  if (!value.IsBoolean()) throw InvalidArgumentError(what + " must be a boolean");
  return value.As<Napi::Boolean>().Value();
}

std::string stringValue(const Napi::Value& value, const std::string& what) {
  if (!value.IsString()) throw InvalidArgumentError(what + " must be a string");
  return value.As<Napi::String>().Utf8Value();
}

BackendKind backendValue(const Napi::Value& value, const std::string& what) {
  const std::string name = stringValue(value, what);
  if (name == "cpu") return BackendKind::Cpu;
  if (name == "cuda") return BackendKind::Cuda;
  throw InvalidArgumentError(what + " must be 'cpu' or 'cuda', got '" + name + "'");
}

}  // namespace paraserve
