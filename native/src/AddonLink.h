// JS face of links between pipeline stages' devices (NCCL on GPUs): linksAvailable,
// linkUniqueId, openLink, closeLink. A LinkHandle is an External tagged as ours; a forward input's hidden states may
// come over one (a LinkInput, receiving end) and forwardToLink sends over one (sending end).
#pragma once

#include <napi.h>

#include <memory>
#include <string>

#include "core/Backend.h"

namespace paraserve {

void registerLinkExports(Napi::Env env, Napi::Object exports);

// The open link behind a handle: InvalidArgumentError for anything that is not a LinkHandle,
// DisposedError once closed.
std::shared_ptr<StageLink> linkFromHandle(const Napi::Value& value, const std::string& what);

}  // namespace paraserve
