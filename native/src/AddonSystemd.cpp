// notifySystemd export (see AddonSystemd.h). $NOTIFY_SOCKET is a filesystem path or, when
// it starts with '@', a name in the Linux abstract socket namespace.
#include "AddonSystemd.h"

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#ifdef __linux__
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#endif

#include "AddonErrors.h"
#include "AddonValues.h"
#include "core/Errors.h"

namespace paraserve {

namespace {

// Sends state to $NOTIFY_SOCKET; false when it is unset (not running under systemd).
bool notify(const std::string& state) {
#ifdef __linux__
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return false;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const size_t length = std::strlen(path);
  if (path[0] != '/' && path[0] != '@') {
    throw InvalidArgumentError(std::string("NOTIFY_SOCKET must be an absolute path or start with '@', got '") + path +
                               "'");
  }
  if (length >= sizeof(address.sun_path)) throw InvalidArgumentError("NOTIFY_SOCKET is too long");
  std::memcpy(address.sun_path, path, length);
  if (path[0] == '@') address.sun_path[0] = '\0';
  const auto addressLength = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + length);

  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw NativeError("NativeError", std::string("sd_notify: socket() failed: ") + std::strerror(errno));
  const ssize_t sent = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                              reinterpret_cast<const sockaddr*>(&address), addressLength);
  const int sendErrno = errno;
  close(fd);
  if (sent < 0 || static_cast<size_t>(sent) != state.size()) {
    throw NativeError("NativeError", std::string("sd_notify: sending to NOTIFY_SOCKET=") + path +
                                         " failed: " + std::strerror(sendErrno));
  }
  return true;
#else
  (void)state;
  return false;
#endif
}

Napi::Value NotifySystemd(const Napi::CallbackInfo& info) {
  const std::string state = stringValue(info[0], "state");
  if (state.empty()) throw InvalidArgumentError("state must not be empty (e.g. 'READY=1')");
  return Napi::Boolean::New(info.Env(), notify(state));
}

}  // namespace

void registerSystemdExports(Napi::Env env, Napi::Object exports) {
  exportFunction<NotifySystemd>(env, exports, "notifySystemd");
}

}  // namespace paraserve
