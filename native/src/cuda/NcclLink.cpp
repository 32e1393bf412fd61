// NCCL link between two pipeline stages (see NcclLink.h for the design).
#ifdef PARASERVE_WITH_CUDA

#include "cuda/NcclLink.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <set>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "core/Errors.h"

namespace paraserve::cuda {

namespace {

using Clock = std::chrono::steady_clock;
constexpr Clock::time_point kNoDeadline = Clock::time_point::max();
// An arrival nobody took for this long belonged to a request that ended before its forward.
constexpr auto kUnclaimedLifetime = std::chrono::seconds(120);

// Thrown inside the link's thread when close() asked it to stop: an end, not a failure.
struct LinkClosed {};

void checkNccl(ncclComm_t comm, ncclResult_t result, const std::string& what) {
  if (result == ncclSuccess) return;
  std::string message = what + " failed: " + ncclGetErrorString(result);
  const char* detail = comm == nullptr ? nullptr : ncclGetLastError(comm);
  if (detail != nullptr && detail[0] != '\0') message += std::string(" (") + detail + ")";
  throw NcclError(message);
}

// An activation queued on the sending end.
struct Outgoing {
  uint64_t tag = 0;
  DeviceBuffer rows;
  int64_t floats = 0;
  cudaEvent_t ready = nullptr;
  Outgoing() = default;
  Outgoing(const Outgoing&) = delete;
  Outgoing& operator=(const Outgoing&) = delete;
  ~Outgoing() {
    if (ready != nullptr) cudaEventDestroy(ready);
  }
};

}  // namespace

LinkArrival::~LinkArrival() {
  if (landed != nullptr) cudaEventDestroy(landed);
}

struct NcclLink::Shared {
  int device = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  uint64_t* hostHeader = nullptr;  // pinned: tag, float count
  DeviceBuffer header;             // the same two values on the device
  std::atomic<bool> closing{false};
  std::mutex mutex;
  std::condition_variable changed;
  std::string failure;  // why the link stopped working; empty while it works
  std::deque<std::unique_ptr<Outgoing>> outbox;
  std::map<uint64_t, std::unique_ptr<LinkArrival>> arrived;
  std::multiset<uint64_t> awaited;  // tags forwards wait for
  std::vector<std::unique_ptr<LinkArrival>> stranded;  // taken, rows never landed

  Shared() = default;
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;

  // Runs on the last thread to let go: the link's own, or the opener's when opening failed.
  // Aborting first ends any NCCL kernel still waiting on a peer, so the stream drains.
  ~Shared() {
    cudaSetDevice(device);
    if (comm != nullptr) ncclCommAbort(comm);
    if (stream != nullptr) cudaStreamSynchronize(stream);
    cudaGetLastError();
    outbox.clear();
    arrived.clear();
    stranded.clear();
    header = DeviceBuffer();
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (hostHeader != nullptr) cudaFreeHost(hostHeader);
  }

  // Polls done() until it is true; LinkClosed once close() was called, NcclError past deadline.
  template <typename Done>
  void pollUntil(Done done, Clock::time_point deadline, const char* what) {
    auto pause = std::chrono::microseconds(5);
    while (!done()) {
      if (closing.load()) throw LinkClosed{};
      if (Clock::now() >= deadline) throw NcclError(std::string(what) + ": the other end of the link did not answer in time");
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(500));
    }
  }

  // Waits out a call on the non-blocking communicator, which may answer ncclInProgress.
  void settle(ncclResult_t result, const char* what, Clock::time_point deadline) {
    pollUntil(
        [&] {
          if (result == ncclInProgress) {
            const ncclResult_t queried = ncclCommGetAsyncError(comm, &result);
            if (queried != ncclSuccess) result = queried;
          }
          if (result == ncclInProgress) return false;
          checkNccl(comm, result, what);
          return true;
        },
        deadline, what);
  }

  void drain(Clock::time_point deadline, const char* what) {
    pollUntil(
        [&] {
          const cudaError_t status = cudaStreamQuery(stream);
          if (status == cudaErrorNotReady) {
            cudaGetLastError();
            return false;
          }
          check(status, what);
          return true;
        },
        deadline, what);
  }

  void sendHeader(uint64_t tag, int64_t floats, Clock::time_point deadline) {
    hostHeader[0] = tag;
    hostHeader[1] = static_cast<uint64_t>(floats);
    check(cudaMemcpyAsync(header.data(), hostHeader, 2 * sizeof(uint64_t), cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync (link header)");
    settle(ncclSend(header.data(), 2, ncclUint64, 1, comm, stream), "ncclSend (link header)", deadline);
  }

  // Posts the next header's receive and waits for it (and for whatever the stream still ran).
  void receiveHeader(Clock::time_point deadline) {
    settle(ncclRecv(header.data(), 2, ncclUint64, 0, comm, stream), "ncclRecv (link header)", deadline);
    check(cudaMemcpyAsync(hostHeader, header.data(), 2 * sizeof(uint64_t), cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync (link header)");
    drain(deadline, "receiving a link header");
  }

  // Whether a forward waits for a tag that has not arrived: only then is a receive posted.
  // Call with mutex held.
  bool receiveWanted() const {
    for (uint64_t tag : awaited) {
      if (arrived.count(tag) == 0) return true;
    }
    return false;
  }

  void fail(const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      failure = why;
    }
    changed.notify_all();
  }
};

namespace {

using Shared = NcclLink::Shared;

// The sending end's thread: each queued activation goes as a header, then its rows.
void sendLoop(std::shared_ptr<Shared> link) {
  Shared& s = *link;
  try {
    check(cudaSetDevice(s.device), "cudaSetDevice (link)");
    for (;;) {
      std::unique_ptr<Outgoing> next;
      {
        std::unique_lock<std::mutex> lock(s.mutex);
        s.changed.wait(lock, [&] { return s.closing.load() || !s.outbox.empty(); });
        if (s.closing.load()) return;
        next = std::move(s.outbox.front());
        s.outbox.pop_front();
      }
      check(cudaStreamWaitEvent(s.stream, next->ready, 0), "cudaStreamWaitEvent (activation ready)");
      s.sendHeader(next->tag, next->floats, kNoDeadline);
      s.settle(ncclSend(next->rows.data(), static_cast<size_t>(next->floats), ncclFloat32, 1, s.comm, s.stream),
               "ncclSend (activation)", kNoDeadline);
      s.drain(kNoDeadline, "sending an activation");
    }
  } catch (const LinkClosed&) {
  } catch (const std::exception& error) {
    s.fail(error.what());
  }
}

// The receiving end's thread: while a forward waits for an activation that has not arrived,
// receives the next header and its rows (in the order they were sent, whatever their tags)
// and files them by tag. A receive is posted only on demand, never left waiting: an NCCL
// kernel spinning on an idle link would stall the device's other work whenever the driver
// must synchronise the context (lazy kernel loading, the first use of a cuBLAS kernel), and
// that work may be what the sender waits for.
void receiveLoop(std::shared_ptr<Shared> link) {
  Shared& s = *link;
  try {
    check(cudaSetDevice(s.device), "cudaSetDevice (link)");
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(s.mutex);
        s.changed.wait(lock, [&] { return s.closing.load() || s.receiveWanted(); });
        if (s.closing.load()) return;
      }
      s.receiveHeader(kNoDeadline);
      const uint64_t tag = s.hostHeader[0];
      const auto floats = static_cast<int64_t>(s.hostHeader[1]);
      if (floats <= 0) continue;
      auto arrival = std::make_unique<LinkArrival>();
      arrival->rows = DeviceBuffer(static_cast<uint64_t>(floats) * sizeof(float), "activation from the previous stage", s.stream);
      arrival->floats = floats;
      s.settle(ncclRecv(arrival->rows.data(), static_cast<size_t>(floats), ncclFloat32, 0, s.comm, s.stream),
               "ncclRecv (activation)", kNoDeadline);
      check(cudaEventCreateWithFlags(&arrival->landed, cudaEventDisableTiming), "cudaEventCreate (activation)");
      check(cudaEventRecord(arrival->landed, s.stream), "cudaEventRecord (activation)");
      arrival->filedAt = Clock::now();
      {
        std::lock_guard<std::mutex> lock(s.mutex);
        for (auto it = s.arrived.begin(); it != s.arrived.end();) {
          it = arrival->filedAt - it->second->filedAt > kUnclaimedLifetime ? s.arrived.erase(it) : std::next(it);
        }
        s.arrived[tag] = std::move(arrival);
      }
      s.changed.notify_all();
    }
  } catch (const LinkClosed&) {
  } catch (const std::exception& error) {
    s.fail(error.what());
  }
}

}  // namespace

NcclLink::NcclLink(int device, const ncclUniqueId& id, bool sends, double timeoutSeconds)
    : device_(device), sends_(sends), shared_(std::make_shared<Shared>()) {
  Shared& s = *shared_;
  s.device = device;
  const Clock::time_point deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeoutSeconds));
  useDevice(device);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  s.settle(ncclCommInitRankConfig(&s.comm, 2, id, sends ? 0 : 1, &config), "ncclCommInitRankConfig (joining the link)",
           deadline);
  check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate (link)");
  check(cudaHostAlloc(reinterpret_cast<void**>(&s.hostHeader), 2 * sizeof(uint64_t), cudaHostAllocDefault),
        "cudaHostAlloc (link header)");
  s.header = DeviceBuffer(2 * sizeof(uint64_t), "link header", s.stream);
  // One empty header sets the peer connection up now rather than on the first request.
  if (sends) {
    s.sendHeader(0, 0, deadline);
    s.drain(deadline, "the link's first header");
  } else {
    s.receiveHeader(deadline);
  }
  std::thread(sends ? sendLoop : receiveLoop, shared_).detach();
}

NcclLink::~NcclLink() { close(); }

void NcclLink::close() {
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    shared_->closing = true;
  }
  shared_->changed.notify_all();
}

void NcclLink::send(uint64_t tag, DeviceBuffer rows, int64_t floats, cudaEvent_t ready) {
  auto outgoing = std::make_unique<Outgoing>();
  outgoing->tag = tag;
  outgoing->rows = std::move(rows);
  outgoing->floats = floats;
  outgoing->ready = ready;
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    if (!shared_->failure.empty()) throw NcclError("the link to the next stage failed: " + shared_->failure);
    if (shared_->closing.load()) throw NcclError("the link to the next stage is closed");
    shared_->outbox.push_back(std::move(outgoing));
  }
  shared_->changed.notify_all();
}

std::unique_ptr<LinkArrival> NcclLink::take(uint64_t tag, int64_t floats, double timeoutSeconds) {
  Shared& s = *shared_;
  const Clock::time_point deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeoutSeconds));
  const std::string what = "the activation under tag " + std::to_string(tag);
  std::unique_ptr<LinkArrival> arrival;
  {
    std::unique_lock<std::mutex> lock(s.mutex);
    const auto waiting = s.awaited.insert(tag);
    s.changed.notify_all();
    s.changed.wait_until(lock, deadline, [&] {
      return s.arrived.count(tag) > 0 || !s.failure.empty() || s.closing.load();
    });
    s.awaited.erase(waiting);
    const auto found = s.arrived.find(tag);
    if (found == s.arrived.end()) {
      if (!s.failure.empty()) throw NcclError("the link from the previous stage failed: " + s.failure);
      if (s.closing.load()) throw NcclError("the link from the previous stage is closed");
      throw NcclError(what + " did not come over the link within " + std::to_string(timeoutSeconds) + " s");
    }
    arrival = std::move(found->second);
    s.arrived.erase(found);
  }
  // Its rows must have landed before anything reads or frees them: a sender that died between
  // a header and its rows would otherwise leave the forward waiting on the GPU for good. Rows
  // still on their way at the deadline stay with the link, freed once it is torn down.
  auto pause = std::chrono::microseconds(5);
  for (;;) {
    const cudaError_t status = cudaEventQuery(arrival->landed);
    if (status == cudaSuccess) break;
    cudaGetLastError();
    if (status != cudaErrorNotReady || Clock::now() >= deadline || s.closing.load()) {
      {
        std::lock_guard<std::mutex> lock(s.mutex);
        s.stranded.push_back(std::move(arrival));
      }
      if (status != cudaErrorNotReady) check(status, "cudaEventQuery (activation)");
      throw NcclError(what + " did not finish arriving");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(500));
  }
  if (arrival->floats != floats) {
    throw InvalidArgumentError(what + " holds " + std::to_string(arrival->floats) + " floats, not the " +
                               std::to_string(floats) + " its forward expects");
  }
  return arrival;
}

}  // namespace paraserve::cuda

#endif  // PARASERVE_WITH_CUDA
