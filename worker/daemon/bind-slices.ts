// Binding a model's tensors runs in time slices between yields to the event loop, not one
// event-loop turn per tensor: on CUDA a bind only queues a copy (microseconds), and under load
// one turn per tensor made binding a few hundred tensors take hundreds of milliseconds; on the
// CPU backend a bind converts the tensor (milliseconds) and the slices keep the worker
// responsive. Used by swap-ins (swap.ts). A load (loader.ts) still yields after each tensor:
// it waits for each tensor's bytes to land anyway, and slicing there changed when a
// consolidation's snapshot reached the gateway relative to its READY — left for a change of
// its own, with the test that depends on that order.
import { setImmediate as yieldToLoop } from 'node:timers/promises';

const BIND_SLICE_MS = 10;

/** Call after each bind: yields to the event loop once the current slice has run long enough. */
export function bindSlices(): () => Promise<void> {
  let sliceStarted = performance.now();
  return async () => {
    if (performance.now() - sliceStarted <= BIND_SLICE_MS) return;
    await yieldToLoop();
    sliceStarted = performance.now();
  };
}
