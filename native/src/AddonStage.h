// JS face of stages: createStage, bindTensor, missingTensors, forward, releaseSequence,
// stageDeviceBytes, disposeStage. A StageHandle is an External tagged as ours.
#pragma once

#include <napi.h>

namespace paraserve {

void registerStageExports(Napi::Env env, Napi::Object exports);

}  // namespace paraserve
