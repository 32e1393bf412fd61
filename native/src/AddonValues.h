// Reading JS arguments into C++ values with clear InvalidArgumentErrors: every field of
// the addon's inputs goes through one of these, so a wrong type or range never reaches
// the core as garbage.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

#include "core/Backend.h"

namespace paraserve {

// Largest integer a JS number holds exactly.
constexpr int64_t kMaxSafeInteger = (int64_t{1} << 53) - 1;

Napi::Object objectValue(const Napi::Value& value, const std::string& what);
// An integral number in [min, max].
int64_t integerValue(const Napi::Value& value, const std::string& what, int64_t min, int64_t max);
double numberValue(const Napi::Value& value, const std::string& what);
bool boolValue(const Napi::Value& value, const std::string& what);
std::string stringValue(const Napi::Value& value, const std::string& what);
BackendKind backendValue(const Napi::Value& value, const std::string& what);

}  // namespace paraserve
