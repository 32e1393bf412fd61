// The scheduler's vocabulary: what it decides over (SchedulerState, ScheduleRequest) and what it
// decides (SchedulerAction). Plain data only, so the same policy runs in the gateway's loop and
// in a simulator. A pipelined cold start is the action 'load-pipeline-then-run': k stages on
// k distinct workers sharing one instance id. Swapping is decided by swap-policy.ts (its own
// RouteDecision), which the loop asks first for whole-model requests. Cold
// starts carry a ColdStartExplanation so the request's trace can say why they look as they do.
// A serving pipeline is consolidated by a ConsolidationDecision: a whole-model load in the
// background, on a worker decide.ts chooseConsolidationTarget picks.
import type { StageByteProfile } from '../../worker/models/stage-plan.js';
import type { WorkerView } from '../cluster/worker-view.js';
import type { DegreeCandidate, TtftPrediction } from './coldstart.js';

/** A contiguous layer range of a model ([0, numLayers) with both ends: the whole model). */
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
  /** Stages of a pipelined cold start forced by configuration (degree = length, >= 2); null: none forced. */
  pipeline: readonly PlannedStage[] | null;
  /**
   * What the cold-start policy (coldstart.ts chooseDegree) needs when the degree is not forced
   * and the model has a TTFT SLO; null: a forced pipeline, or else one whole-model worker.
   */
  coldStart: ColdStartRequest | null;
}

export interface ColdStartRequest {
  /** Bytes per layer and per end, from the checkpoint's headers. */
  profile: StageByteProfile;
  /** The model's registered TTFT SLO, ms. */
  ttftSloMs: number;
  /** Largest degree to consider (capped again by layers and READY workers). */
  maxDegree: number;
}

/** Why a cold start has its degree and placement: plain data for the request's trace. */
export interface ColdStartExplanation {
  /** 'policy': chosen by chooseDegree; 'forced': degree from configuration; 'default': no SLO, one worker. */
  source: 'policy' | 'forced' | 'default';
  degree: number;
  /** Worker of each stage, in pipeline order (one for a whole model). */
  workers: string[];
  reason: string;
  /** A limit the decision ran into (SLO not met, fewer servers than wanted); null when none. */
  note: string | null;
  /** The SLO judged against, ms; null when none was. */
  sloMs: number | null;
  /** Predicted TTFT and its parts; null when the policy did not predict (forced, default). */
  prediction: TtftPrediction | null;
  /** Every degree evaluated, smallest first (empty unless source is 'policy'). */
  considered: DegreeCandidate[];
}

/** One stage of a planned pipeline: its layers and the weight bytes they need on a device. */
export interface PlannedStage {
  range: StageRange;
  bytes: number;
}

/** Where a pipeline's stage goes. */
export interface PlacedStage extends PlannedStage {
  workerId: string;
  device: number;
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
  /** For a stage of a pipeline (all stages share instanceId): its index and the stage count. */
  pipelineStage: { index: number; count: number } | null;
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
  /** Load a new whole-model instance, then decide again. */
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
      coldStart: ColdStartExplanation;
    }
  /**
   * Load a pipeline: stage i on stages[i] (distinct workers), all under instanceId, each told
   * every stage's address; then decide again (the request runs on stage 0's worker).
   */
  | {
      kind: 'load-pipeline-then-run';
      instanceId: string;
      stages: PlacedStage[];
      startedMs: number;
      reason: string;
      coldStart: ColdStartExplanation;
    }
  /** Nothing can serve the request now; `reason` goes to the client. */
  | { kind: 'reject'; status: 503; reason: string };

/** A pipeline that answered READY, to be consolidated into one whole-model instance. */
export interface ConsolidationRequest {
  model: string;
  /** The pipeline's instance id (shared by its stages). */
  instanceId: string;
  /** Worker of each stage, in pipeline order. */
  workers: readonly string[];
  /** The whole model's range and weight bytes. */
  range: StageRange;
  bytes: number;
}

export type ConsolidationDecision =
  /** Load the whole model with this (background) load; requests keep going to the pipeline until it is READY. */
  | { kind: 'consolidate'; load: Extract<SchedulerAction, { kind: 'load-then-run' }> }
  /** Leave the pipeline as it is; `reason` goes to the log. */
  | { kind: 'skip'; reason: string };
