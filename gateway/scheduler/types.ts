// The scheduler's vocabulary: what it decides over (SchedulerState, ScheduleRequest) and what it
// decides (SchedulerAction). Plain data only, so the same policy runs in the gateway's loop and
// in a simulator. Pipeline degree, stage placement and swap-in arrive as new action kinds and
// fields here; the loop learns to perform them, decide() learns to choose them.
import type { WorkerView } from '../cluster/worker-view.js';

/** A contiguous layer range of a model (the whole model for now: [0, numLayers) with both ends). */
export interface StageRange {
  layerStart: number;
  layerEnd: number;
  hasEmbeddings: boolean;
  hasHead: boolean;
}

/** What one request needs placed. */
export interface ScheduleRequest {
  model: string;
  /** Weight bytes the instance needs on a device. */
  modelBytes: number;
  /** The range to load when a new instance is needed. */
  range: StageRange;
}

/** A LoadStage the gateway started and has not yet seen settle in the worker's snapshots. */
export interface InFlightLoad {
  instanceId: string;
  model: string;
  workerId: string;
  device: number;
  bytes: number;
  startedMs: number;
  /** 'ready': the worker answered READY but its snapshots may not show the instance ON_DEVICE yet. */
  status: 'loading' | 'ready';
}

export interface SchedulerState {
  workers: readonly WorkerView[];
  loads: readonly InFlightLoad[];
  /** Requests the gateway itself has running per instance id (fresher than snapshots). */
  gatewayActive: ReadonlyMap<string, number>;
}

export type SchedulerAction =
  /** An instance is on a device: send the request there. */
  | { kind: 'run-on'; workerId: string; instanceId: string; reason: string }
  /** A load of this model is under way: wait for it, then decide again. */
  | { kind: 'await-load'; workerId: string; instanceId: string; reason: string }
  /**
   * Load a new instance, then decide again. Seam: a pipelined cold start becomes a list of
   * (worker, device, range) stages here, chosen by degree and NIC load.
   */
  | {
      kind: 'load-then-run';
      workerId: string;
      instanceId: string;
      device: number;
      range: StageRange;
      bytes: number;
      /** When the decision was taken: the load's start time. */
      startedMs: number;
      reason: string;
    }
  /** Nothing can serve the request now; `reason` goes to the client. */
  | { kind: 'reject'; status: 503; reason: string };
