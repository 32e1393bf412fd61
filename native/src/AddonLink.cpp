// Link exports (see AddonLink.h). openLink blocks until both ends have joined, so it runs on a
// libuv worker thread; closeLink only flags the link (its own thread tears it down).
#include "AddonLink.h"

#include <utility>
#include <vector>

#include "AddonAsync.h"
#include "AddonErrors.h"
#include "AddonHandles.h"
#include "AddonValues.h"
#include "core/Backends.h"
#include "core/Errors.h"

namespace paraserve {

namespace {

constexpr napi_type_tag kLinkTag = {0x7061726173657276ULL, 0x4c696e6b30303031ULL};

struct LinkBox {
  std::shared_ptr<StageLink> link;  // null once closed
};

LinkBox& unwrapLinkBox(const Napi::Value& value, const std::string& what) {
  return unwrapHandle<LinkBox>(value, kLinkTag, what + " must be a LinkHandle from openLink");
}

Napi::Value LinksAvailable(const Napi::CallbackInfo& info) {
  const Backend* backend = findBackend(backendValue(info[0], "backend"));
  return Napi::Boolean::New(info.Env(), backend != nullptr && backend->hasLinks());
}

Napi::Value LinkUniqueId(const Napi::CallbackInfo& info) {
  const std::vector<uint8_t> id = requireBackend(backendValue(info[0], "backend")).linkUniqueId();
  return Napi::Buffer<uint8_t>::Copy(info.Env(), id.data(), id.size());
}

// Never throws: every failure, argument checks included, rejects the returned promise.
Napi::Value OpenLink(const Napi::CallbackInfo& info) {
  try {
    Backend* backend = &requireBackend(backendValue(info[0], "backend"));
    const Napi::Object options = objectValue(info[1], "options");
    const int64_t device = integerValue(options.Get("device"), "options.device", 0, kMaxSafeInteger);
    const Napi::Value idValue = options.Get("uniqueId");
    if (!idValue.IsBuffer()) throw InvalidArgumentError("options.uniqueId must be a Buffer from linkUniqueId");
    const auto idBuffer = idValue.As<Napi::Buffer<uint8_t>>();
    std::vector<uint8_t> id(idBuffer.Data(), idBuffer.Data() + idBuffer.Length());
    const bool sends = boolValue(options.Get("sends"), "options.sends");
    const double timeoutMs = numberValue(options.Get("timeoutMs"), "options.timeoutMs");
    if (!(timeoutMs > 0)) throw InvalidArgumentError("options.timeoutMs must be > 0");
    return runAsync<std::shared_ptr<StageLink>>(
        info.Env(), "paraserve.openLink",
        [backend, device, id = std::move(id), sends, timeoutMs] {
          return backend->openLink(device, id, sends, timeoutMs / 1000.0);
        },
        [](Napi::Env env, std::shared_ptr<StageLink>& link) -> Napi::Value {
          auto box = std::make_unique<LinkBox>();
          box->link = std::move(link);
          return wrapHandle(env, std::move(box), kLinkTag);
        });
  } catch (...) {
    return rejectedPromise(info.Env());
  }
}

// Idempotent, like disposeStage: closing twice is not an error, using a closed link is.
Napi::Value CloseLink(const Napi::CallbackInfo& info) {
  LinkBox& box = unwrapLinkBox(info[0], "link");
  if (box.link) box.link->close();
  box.link.reset();
  return info.Env().Undefined();
}

}  // namespace

std::shared_ptr<StageLink> linkFromHandle(const Napi::Value& value, const std::string& what) {
  LinkBox& box = unwrapLinkBox(value, what);
  if (!box.link) throw DisposedError(what + ": the link was closed (closeLink)");
  return box.link;
}

void registerLinkExports(Napi::Env env, Napi::Object exports) {
  exportFunction<LinksAvailable>(env, exports, "linksAvailable");
  exportFunction<LinkUniqueId>(env, exports, "linkUniqueId");
  exportFunction<OpenLink>(env, exports, "openLink");
  exportFunction<CloseLink>(env, exports, "closeLink");
}

}  // namespace paraserve
