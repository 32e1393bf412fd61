// Binding a model's tensors runs in time slices between yields to the event loop, not one
// event-loop turn per tensor: on CUDA a bind only queues a copy (microseconds), and under load
// one turn per tensor made binding a few hundred tensors take hundreds of milliseconds; on the
// CPU backend a bind converts the tensor (milliseconds) and the slices keep the worker
// responsive. Shared by loads (loader.ts) and swap-ins (swap.ts).
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
