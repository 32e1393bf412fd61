// Entry point of paraserve.node: registers every export of worker/native/addon-types.ts,
// grouped by the Addon<Noun> file that implements it.
#include <napi.h>

#include "AddonBuildInfo.h"
#include "AddonDiagnostics.h"
#include "AddonHostBuffer.h"
#include "AddonLink.h"
#include "AddonStage.h"
#include "AddonSystemd.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  paraserve::registerBuildInfoExports(env, exports);
  paraserve::registerDiagnosticsExports(env, exports);
  paraserve::registerHostBufferExports(env, exports);
  paraserve::registerLinkExports(env, exports);
  paraserve::registerStageExports(env, exports);
  paraserve::registerSystemdExports(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(paraserve, Init)
