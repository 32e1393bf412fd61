// The gateway's gRPC client of one worker daemon. Every call carries a deadline; the channel
// pings every 10 s and gives up after 5 s without an answer, so a worker whose host vanishes
// (no FIN, no RST) fails its calls within seconds instead of hanging them.
import * as grpc from '@grpc/grpc-js';
import { loadParaserveProto } from '../../protos/load.js';
import type { CreateLinkIdReply__Output } from '../../protos/generated/paraserve/v1/CreateLinkIdReply.js';
import type { GenerateEvent__Output } from '../../protos/generated/paraserve/v1/GenerateEvent.js';
import type { GenerateRequest } from '../../protos/generated/paraserve/v1/GenerateRequest.js';
import type { HealthReply__Output } from '../../protos/generated/paraserve/v1/HealthReply.js';
import type { LoadProgress__Output } from '../../protos/generated/paraserve/v1/LoadProgress.js';
import type { LoadStageRequest } from '../../protos/generated/paraserve/v1/LoadStageRequest.js';
import type { SwapReply__Output } from '../../protos/generated/paraserve/v1/SwapReply.js';
import type { UnloadStageReply__Output } from '../../protos/generated/paraserve/v1/UnloadStageReply.js';
import type { WorkerClient } from '../../protos/generated/paraserve/v1/Worker.js';
import type { WorkerEvent__Output } from '../../protos/generated/paraserve/v1/WorkerEvent.js';

export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  // Token streams are small, but a future pipeline may carry activations through the gateway.
  'grpc.max_receive_message_length': 64 * 1024 * 1024,
};

function deadline(timeoutMs: number): Date {
  return new Date(Date.now() + timeoutMs);
}

export function isServiceError(e: unknown): e is grpc.ServiceError {
  return e instanceof Error && 'code' in e && typeof e.code === 'number' && 'details' in e;
}

/** A unary call with a deadline, as a promise; an empty reply is an error. */
function unary<T>(
  what: string,
  timeoutMs: number,
  call: (options: grpc.CallOptions, done: (err: grpc.ServiceError | null, reply?: T) => void) => void,
): Promise<T> {
  return new Promise((resolve, reject) => {
    call({ deadline: deadline(timeoutMs) }, (err, reply) => {
      if (err) reject(err);
      else if (!reply) reject(new Error(`empty ${what} reply`));
      else resolve(reply);
    });
  });
}

/** One channel per worker; calls are multiplexed on it. */
export class WorkerChannel {
  private readonly client: WorkerClient;

  constructor(readonly address: string) {
    const Worker = loadParaserveProto().paraserve.v1.Worker;
    this.client = new Worker(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
  }

  health(timeoutMs: number): Promise<HealthReply__Output> {
    return unary('Health', timeoutMs, (options, done) => this.client.Health({}, options, done));
  }

  unloadStage(instanceId: string, timeoutMs: number): Promise<UnloadStageReply__Output> {
    return unary('UnloadStage', timeoutMs, (options, done) => this.client.UnloadStage({ instanceId }, options, done));
  }

  /** Puts a HOST_ONLY instance on `device` from its host copy, or moves an ON_DEVICE one there; -1: the worker chooses. */
  swapIn(instanceId: string, device: number, timeoutMs: number): Promise<SwapReply__Output> {
    return unary('SwapIn', timeoutMs, (options, done) => this.client.SwapIn({ instanceId, device }, options, done));
  }

  /** Drops an instance's device copy (after its running requests); the host copy stays. */
  swapOut(instanceId: string, timeoutMs: number): Promise<SwapReply__Output> {
    return unary('SwapOut', timeoutMs, (options, done) => this.client.SwapOut({ instanceId }, options, done));
  }

  /** An id for a device link from a stage on this worker to the next stage; FAILED_PRECONDITION where it has none. */
  async createLinkId(timeoutMs: number): Promise<Buffer> {
    const reply = await unary<CreateLinkIdReply__Output>('CreateLinkId', timeoutMs, (options, done) => this.client.CreateLinkId({}, options, done));
    return reply.uniqueId;
  }

  /** Lives as long as the worker does: no deadline; cancel() ends it. Keepalive detects loss. */
  watchEvents(): grpc.ClientReadableStream<WorkerEvent__Output> {
    return this.client.WatchEvents({});
  }

  loadStage(req: LoadStageRequest, timeoutMs: number): grpc.ClientReadableStream<LoadProgress__Output> {
    return this.client.LoadStage(req, { deadline: deadline(timeoutMs) });
  }

  generate(req: GenerateRequest, timeoutMs: number): grpc.ClientReadableStream<GenerateEvent__Output> {
    return this.client.Generate(req, { deadline: deadline(timeoutMs) });
  }

  close(): void {
    this.client.close();
  }
}
