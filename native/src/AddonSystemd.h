// JS face of systemd readiness: notifySystemd(state), the sd_notify(3) protocol written
// by hand (one datagram to $NOTIFY_SOCKET) so the addon needs no libsystemd.
#pragma once

#include <napi.h>

namespace paraserve {

void registerSystemdExports(Napi::Env env, Napi::Object exports);

}  // namespace paraserve
