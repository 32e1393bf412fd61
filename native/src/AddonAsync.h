// Running a piece of native work on a libuv worker thread and settling a promise with it,
// for every export that waits on compute or a device. The work's exception becomes a
// rejection with the C++ error's name (AddonErrors.h); a JS value passed as `pin` (a handle)
// stays referenced until the promise settles, so garbage collection cannot free what the
// work uses.
#pragma once

#include <napi.h>

#include <functional>
#include <utility>

#include "AddonErrors.h"

namespace paraserve {

template <typename Result>
class AsyncTask final : public Napi::AsyncWorker {
 public:
  using Work = std::function<Result()>;
  using ToJs = std::function<Napi::Value(Napi::Env, Result&)>;

  AsyncTask(Napi::Env env, const char* name, Work work, ToJs toJs, Napi::Value pin)
      : Napi::AsyncWorker(env, name),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        toJs_(std::move(toJs)) {
    if (!pin.IsEmpty() && !pin.IsUndefined()) pin_ = Napi::Persistent(pin);
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      result_ = work_();
    } catch (...) {
      const CaughtError caught = describeCurrentException();
      errorName_ = caught.name;
      SetError(caught.message);
    }
  }

  void OnOK() override {
    try {
      deferred_.Resolve(toJs_(Env(), result_));
    } catch (const Napi::Error& error) {
      deferred_.Reject(error.Value());
    }
  }

  void OnError(const Napi::Error& error) override {
    deferred_.Reject(namedError(Env(), errorName_, error.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  ToJs toJs_;
  Napi::Reference<Napi::Value> pin_;
  Result result_{};
  const char* errorName_ = "NativeError";
};

// Queues work and returns its promise.
template <typename Result>
Napi::Promise runAsync(Napi::Env env, const char* name, std::function<Result()> work,
                       std::function<Napi::Value(Napi::Env, Result&)> toJs, Napi::Value pin = Napi::Value()) {
  auto* task = new AsyncTask<Result>(env, name, std::move(work), std::move(toJs), pin);
  const Napi::Promise promise = task->promise();
  task->Queue();
  return promise;
}

// runAsync for work with no result: the promise resolves to undefined.
inline Napi::Promise runAsyncVoid(Napi::Env env, const char* name, std::function<void()> work,
                                  Napi::Value pin = Napi::Value()) {
  return runAsync<bool>(
      env, name,
      [work = std::move(work)] {
        work();
        return true;
      },
      [](Napi::Env resultEnv, bool&) { return resultEnv.Undefined(); }, pin);
}

// Rejects a promise with the exception being handled; call only inside a catch block. For
// promise-returning exports, which never throw synchronously.
Napi::Promise rejectedPromise(Napi::Env env);

}  // namespace paraserve
