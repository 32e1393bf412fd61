// Host buffer and host pool exports (see AddonHostBuffer.h). All of them run on the JS
// thread but copyHostBuffer, whose copies (gigabytes when a load reuses another instance's
// host copy) run on a libuv worker thread. A binding shares ownership of its buffer, so freeHostBuffer right after
// bindTensor is safe even while an asynchronous copy still reads it.
#include "AddonHostBuffer.h"

#include <cstring>
#include <memory>

#include "AddonAsync.h"
#include "AddonErrors.h"
#include "AddonHandles.h"
#include "AddonValues.h"
#include "core/Backends.h"
#include "core/Errors.h"
#include "core/HostPool.h"

namespace paraserve {

namespace {

constexpr napi_type_tag kHostBufferTag = {0x7061726173657276ULL, 0x486f737442756631ULL};

struct HostBufferBox {
  std::shared_ptr<HostBuffer> buffer;  // null once freed
};

HostBufferBox& unwrapBox(const Napi::Value& value, const std::string& what) {
  return unwrapHandle<HostBufferBox>(value, kHostBufferTag, what + " must be a HostBufferHandle from allocHostBuffer");
}

Napi::Value AllocHostBuffer(const Napi::CallbackInfo& info) {
  const int64_t bytes = integerValue(info[0], "bytes", 1, kMaxSafeInteger);
  const bool pinned = boolValue(info[1], "pinned");
  auto box = std::make_unique<HostBufferBox>();
  box->buffer = allocateHostBuffer(static_cast<uint64_t>(bytes), pinned);
  return wrapHandle(info.Env(), std::move(box), kHostBufferTag);
}

Napi::Value HostBufferInfo(const Napi::CallbackInfo& info) {
  const HostBuffer& buffer = unwrapHostBuffer(info[0], "buffer");
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("bytes", Napi::Number::New(info.Env(), static_cast<double>(buffer.bytes())));
  out.Set("pinned", Napi::Boolean::New(info.Env(), buffer.pinned()));
  return out;
}

Napi::Value WriteHostBuffer(const Napi::CallbackInfo& info) {
  const HostBuffer& buffer = unwrapHostBuffer(info[0], "buffer");
  const int64_t offset = integerValue(info[1], "offset", -kMaxSafeInteger, kMaxSafeInteger);
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw InvalidArgumentError("data must be a Uint8Array");
  }
  const auto data = info[2].As<Napi::Uint8Array>();
  const uint64_t length = data.ByteLength();
  if (offset < 0 || static_cast<uint64_t>(offset) > buffer.bytes() ||
      length > buffer.bytes() - static_cast<uint64_t>(offset)) {
    throw Napi::RangeError::New(info.Env(), "writing " + std::to_string(length) + " bytes at offset " +
                                                std::to_string(offset) + " runs past the end of a " +
                                                std::to_string(buffer.bytes()) + "-byte host buffer");
  }
  if (length > 0) std::memcpy(buffer.data() + offset, data.Data(), length);
  return info.Env().Undefined();
}

// Both ranges are checked before anything is queued; the promise settles once the bytes
// are copied. The copy holds both buffers, so freeing either meanwhile is safe.
Napi::Value CopyHostBuffer(const Napi::CallbackInfo& info) {
  try {
    std::shared_ptr<const HostBuffer> from = sharedHostBuffer(info[0], "from");
    const int64_t fromOffset = integerValue(info[1], "fromOffset", 0, kMaxSafeInteger);
    std::shared_ptr<const HostBuffer> to = sharedHostBuffer(info[2], "to");
    const int64_t toOffset = integerValue(info[3], "toOffset", 0, kMaxSafeInteger);
    const int64_t bytes = integerValue(info[4], "bytes", 0, kMaxSafeInteger);
    const auto fits = [bytes](const HostBuffer& buffer, int64_t offset) {
      return static_cast<uint64_t>(offset) <= buffer.bytes() && static_cast<uint64_t>(bytes) <= buffer.bytes() - offset;
    };
    if (!fits(*from, fromOffset) || !fits(*to, toOffset)) {
      throw InvalidArgumentError("copying " + std::to_string(bytes) + " bytes from offset " + std::to_string(fromOffset) +
                                 " of a " + std::to_string(from->bytes()) + "-byte buffer to offset " +
                                 std::to_string(toOffset) + " of a " + std::to_string(to->bytes()) +
                                 "-byte buffer runs past the end of one");
    }
    return runAsyncVoid(info.Env(), "paraserve.copyHostBuffer", [from, fromOffset, to, toOffset, bytes] {
      if (bytes > 0) std::memmove(to->data() + toOffset, from->data() + fromOffset, static_cast<size_t>(bytes));
    });
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

Napi::Value PoolInfoValue(Napi::Env env, const HostPoolInfo& pool) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("bytes", Napi::Number::New(env, static_cast<double>(pool.bytes)));
  out.Set("freeBytes", Napi::Number::New(env, static_cast<double>(pool.freeBytes)));
  out.Set("largestFreeBytes", Napi::Number::New(env, static_cast<double>(pool.largestFreeBytes)));
  out.Set("pinned", Napi::Boolean::New(env, pool.pinned));
  return out;
}

Napi::Value ConfigureHostPool(const Napi::CallbackInfo& info) {
  const int64_t bytes = integerValue(info[0], "bytes", 1, kMaxSafeInteger);
  const bool pinned = boolValue(info[1], "pinned");
  return PoolInfoValue(info.Env(), configureHostPool(static_cast<uint64_t>(bytes), pinned));
}

Napi::Value HostPoolInfoExport(const Napi::CallbackInfo& info) {
  const std::shared_ptr<HostPool> pool = currentHostPool();
  return pool ? PoolInfoValue(info.Env(), pool->info()) : info.Env().Null();
}

// Idempotent: freeing twice is not an error, using a freed buffer is (DisposedError).
Napi::Value FreeHostBuffer(const Napi::CallbackInfo& info) {
  unwrapBox(info[0], "buffer").buffer.reset();
  return info.Env().Undefined();
}

}  // namespace

const HostBuffer& unwrapHostBuffer(const Napi::Value& value, const std::string& what) {
  return *sharedHostBuffer(value, what);
}

std::shared_ptr<const HostBuffer> sharedHostBuffer(const Napi::Value& value, const std::string& what) {
  HostBufferBox& box = unwrapBox(value, what);
  if (!box.buffer) throw DisposedError(what + " was freed (freeHostBuffer)");
  return box.buffer;
}

void registerHostBufferExports(Napi::Env env, Napi::Object exports) {
  exportFunction<AllocHostBuffer>(env, exports, "allocHostBuffer");
  exportFunction<HostBufferInfo>(env, exports, "hostBufferInfo");
  exportFunction<WriteHostBuffer>(env, exports, "writeHostBuffer");
  exportFunction<CopyHostBuffer>(env, exports, "copyHostBuffer");
  exportFunction<FreeHostBuffer>(env, exports, "freeHostBuffer");
  exportFunction<ConfigureHostPool>(env, exports, "configureHostPool");
  exportFunction<HostPoolInfoExport>(env, exports, "hostPoolInfo");
}

}  // namespace paraserve
