// Handles the addon gives JS for its native objects (host buffers, stages, links): an External
// that owns a box, type-tagged per kind so a handle of one kind, or any other External, is
// never taken for another. The box is freed when JS garbage-collects the handle.
#pragma once

#include <napi.h>

#include <memory>
#include <string>

#include "core/Errors.h"

namespace paraserve {

template <typename Box>
Napi::External<Box> wrapHandle(Napi::Env env, std::unique_ptr<Box> box, const napi_type_tag& tag) {
  auto handle = Napi::External<Box>::New(env, box.get(), [](Napi::Env, Box* owned) { delete owned; });
  box.release();
  handle.TypeTag(&tag);
  return handle;
}

// The box behind a handle of this kind; InvalidArgumentError (`notAHandle`) for anything else.
template <typename Box>
Box& unwrapHandle(const Napi::Value& value, const napi_type_tag& tag, const std::string& notAHandle) {
  if (!value.IsExternal() || !value.As<Napi::External<Box>>().CheckTypeTag(&tag)) throw InvalidArgumentError(notAHandle);
  return *value.As<Napi::External<Box>>().Data();
}

}  // namespace paraserve
