// The Worker gRPC service of protos/paraserve.proto, as thin handlers: each one translates
// between the proto messages and the worker's operations (loader.ts, swap.ts, requests.ts, state.ts)
// and turns failures into statuses with details (errors.ts); pipeline stages (Generate on a
// partial stage, ForwardActivations) are pipeline.ts's. A client that cancels a call —
// the gateway when its HTTP client went away — aborts the work behind it.
import { status, type sendUnaryData, type ServerWritableStream } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { WorkerHandlers } from '../../protos/generated/paraserve/v1/Worker.js';
import { NotImplementedError } from '../native/errors.js';
import { toStatus, WorkerError } from './errors.js';
import { parseModelConfig } from '../models/config.js';
import type { LoadStageRequest__Output } from '../../protos/generated/paraserve/v1/LoadStageRequest.js';
import type { LoadProgress__Output } from '../../protos/generated/paraserve/v1/LoadProgress.js';
import { loadStage, resolveStage, unloadInstance, type LoaderDeps } from './loader.js';
import { isPartialStage, peersProblem, PipelinePeers, runPipelineGenerate, serveActivations, type PipelineDeps } from './pipeline.js';
import { LinkTags } from './links.js';
import { runGenerate } from './requests.js';
import { swapIn, swapOut } from './swap.js';

export interface ServiceDeps extends LoaderDeps {
  /** How long a Drain with deadline_ms 0 waits for in-flight requests. */
  drainTimeoutMs: number;
}

/** Answers a unary call with what `work` resolves to, or the status of what it throws. */
function answer<Res>(callback: sendUnaryData<Res>, work: () => Promise<Res>): void {
  Promise.resolve()
    .then(work)
    .then(
      (reply) => callback(null, reply),
      (e: unknown) => callback(toStatus(e)),
    );
}

/** Ends a streaming call with the status for `error`, unless the client is gone. */
function failStream<Req, Res>(call: ServerWritableStream<Req, Res>, error: unknown, logger: Logger): void {
  const report = toStatus(error);
  logger.debug({ code: report.code, details: report.details, method: call.getPath() }, 'call failed');
  if (call.cancelled) return;
  call.emit('error', { code: report.code, details: report.details });
}

/** An AbortSignal that fires when the client cancels the call (or disconnects). */
function cancelSignal<Req, Res>(call: ServerWritableStream<Req, Res>): AbortSignal {
  const controller = new AbortController();
  if (call.cancelled) controller.abort(new WorkerError(status.CANCELLED, 'the client cancelled the call'));
  call.on('cancelled', () => controller.abort(new WorkerError(status.CANCELLED, 'the client cancelled the call')));
  return controller.signal;
}

/** Writes one message, waiting for the stream to drain when its buffer is full. */
function writeWithBackpressure<Req, Res>(call: ServerWritableStream<Req, Res>, message: Res, signal: AbortSignal): Promise<void> | void {
  if (call.cancelled || signal.aborted) return;
  if (call.write(message)) return;
  return new Promise((resolve) => {
    const done = (): void => {
      call.off('drain', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    call.on('drain', done);
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Whether the request's config parses and its stage range fits the model. */
function stageRangeValid(request: LoadStageRequest__Output, defaultMaxContext: number): boolean {
  try {
    const config = parseModelConfig(JSON.parse(request.configJson) as unknown);
    return typeof resolveStage(request.stage, request.maxContext, defaultMaxContext, config) !== 'string';
  } catch {
    return false;
  }
}

export function workerHandlers(deps: ServiceDeps): WorkerHandlers {
  const { state, logger } = deps;
  const pipeline: PipelineDeps = { addon: deps.addon, state, logger, peers: new PipelinePeers(), linkTags: new LinkTags() };
  return {
    LoadStage(call) {
      const signal = cancelSignal(call);
      // The range itself is the loader's to check (and report) first.
      const problem = stageRangeValid(call.request, deps.defaultMaxContext) ? peersProblem(call.request.stage, call.request.peers) : null;
      if (problem !== null) {
        failStream(call, new WorkerError(status.INVALID_ARGUMENT, problem), logger);
        return;
      }
      // Progress is a few hundred small messages a load, each needed (READY ends it): written
      // as they come, buffered by the stream while the caller is slow; nobody waits on them.
      const report = (progress: LoadProgress__Output): void => {
        if (!call.cancelled && !signal.aborted) call.write(progress);
      };
      loadStage(deps, call.request, report, signal).then(
        () => {
          if (call.request.stage !== null && isPartialStage(call.request.stage)) {
            pipeline.peers.set(call.request.instanceId, call.request.peers);
          }
          if (!call.cancelled) call.end();
        },
        (e: unknown) => failStream(call, e, logger),
      );
    },

    UnloadStage(call, callback) {
      answer(callback, async () => {
        const freedBytes = await unloadInstance(deps, call.request.instanceId);
        pipeline.peers.delete(call.request.instanceId);
        return { freedBytes };
      });
    },

    SwapIn(call, callback) {
      answer(callback, () => {
        state.assertAccepting();
        return swapIn(deps, call.request.instanceId, call.request.device);
      });
    },

    SwapOut(call, callback) {
      answer(callback, () => swapOut(deps, call.request.instanceId));
    },

    Generate(call) {
      const arrivedAt = performance.now();
      const signal = cancelSignal(call);
      const request = call.request;
      const onToken = (id: number, index: number): Promise<void> | void => writeWithBackpressure(call, { token: { id, index } }, signal);
      const stage = state.instance(request.instanceId)?.stage ?? null;
      let run;
      try {
        run =
          stage !== null && isPartialStage(stage)
            ? runPipelineGenerate(pipeline, request, onToken, signal, arrivedAt)
            : runGenerate(state, request, onToken, signal, arrivedAt);
      } catch (e) {
        failStream(call, e, logger);
        return;
      }
      run.then(
        (result) => {
          logger.debug({ request: request.requestId, instance: request.instanceId, ...result }, 'request finished');
          if (call.cancelled) return;
          call.write({ finish: result });
          call.end();
        },
        (e: unknown) => failStream(call, e, logger),
      );
    },

    Cancel(call, callback) {
      const request = state.request(call.request.requestId);
      request?.abort.abort(new WorkerError(status.CANCELLED, `request ${call.request.requestId} was cancelled`));
      callback(null, { found: request !== null });
    },

    Drain(call, callback) {
      const deadline = call.request.deadlineMs > 0 ? call.request.deadlineMs : deps.drainTimeoutMs;
      logger.info({ deadlineMs: deadline }, 'draining');
      state.drain(deadline).then(
        (result) => {
          logger.info(result, 'drained');
          callback(null, result);
        },
        (e: unknown) => callback(toStatus(e)),
      );
    },

    Health(_call, callback) {
      callback(null, { workerId: state.workerId, state: state.lifecycle, backend: state.backend });
    },

    WatchEvents(call) {
      const unsubscribe = state.subscribe({
        onEvent: (event) => {
          if (!call.cancelled) call.write(event);
        },
        onClose: () => {
          if (!call.cancelled) call.end();
        },
      });
      call.on('cancelled', unsubscribe);
      call.on('finish', unsubscribe);
    },

    ForwardActivations(call) {
      serveActivations(pipeline, call);
    },

    CreateLinkId(_call, callback) {
      answer(callback, async () => {
        try {
          return { uniqueId: deps.addon.linkUniqueId(deps.backend) };
        } catch (e) {
          if (e instanceof NotImplementedError) {
            throw new WorkerError(status.FAILED_PRECONDITION, `this worker's ${deps.backend} backend has no device links: ${e.message}`);
          }
          throw e;
        }
      });
    },
  };
}
