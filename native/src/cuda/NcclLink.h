// One direction of a pipeline link between two GPUs over NCCL (issue 4, point 5): a two-rank
// communicator whose rank 0 sends hidden states and rank 1 receives them, device to device.
// Each activation goes as a small header (tag, float count) and then its rows, so the
// receiving end needs no ordering from outside: a thread on each end drives the link — the
// sender's drains a queue of outgoing activations in order, the receiver's posts a receive
// whenever a forward waits for a tag that has not arrived (the tag told over the pipeline's
// gRPC control stream) and files each arrival under its own tag until its forward takes it.
// Nothing here blocks the JS thread or waits forever: the communicator is non-blocking, every
// wait polls with a deadline or the link's closing flag, and only the link's own thread calls
// NCCL once the link is open, so close() (a flag) never races an NCCL call; the thread aborts
// the communicator on its way out.
#pragma once

#ifdef PARASERVE_WITH_CUDA

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "core/Backend.h"
#include "cuda/CudaCheck.h"

namespace paraserve::cuda {

// Rows that came over a link; `landed` fires once they are all there (take() waits for it).
struct LinkArrival {
  DeviceBuffer rows;
  int64_t floats = 0;
  cudaEvent_t landed = nullptr;
  std::chrono::steady_clock::time_point filedAt;
  LinkArrival() = default;
  LinkArrival(const LinkArrival&) = delete;
  LinkArrival& operator=(const LinkArrival&) = delete;
  ~LinkArrival();
};

class NcclLink final : public StageLink {
 public:
  // Joins the link (both ends call this with the same id, one with sends) and exchanges one
  // empty header so the peer connection is up before the first request. Blocks the calling
  // (worker) thread up to timeoutSeconds; NcclError when the peer did not join by then.
  NcclLink(int device, const ncclUniqueId& id, bool sends, double timeoutSeconds);
  ~NcclLink() override;
  NcclLink(const NcclLink&) = delete;
  NcclLink& operator=(const NcclLink&) = delete;

  BackendKind backend() const override { return BackendKind::Cuda; }
  int64_t device() const override { return device_; }
  bool sends() const override { return sends_; }
  void close() override;

  // Sending end: queues `floats` float32 values at rows, to go once `ready` (recorded on the
  // stream that wrote them) has fired. Takes ownership of rows and ready; returns at once.
  // NcclError when the link has failed or closed.
  void send(uint64_t tag, DeviceBuffer rows, int64_t floats, cudaEvent_t ready);
  // Receiving end: the activation sent under tag, its rows landed, waiting up to timeoutSeconds.
  // InvalidArgumentError when it holds another float count; NcclError when the link failed,
  // closed or the activation did not come in time.
  std::unique_ptr<LinkArrival> take(uint64_t tag, int64_t floats, double timeoutSeconds);

  // What the link's thread and this object both use (NcclLink.cpp); named here only so the
  // thread's functions there can name it.
  struct Shared;

 private:
  int device_;
  bool sends_;
  std::shared_ptr<Shared> shared_;
};

}  // namespace paraserve::cuda

#endif  // PARASERVE_WITH_CUDA
