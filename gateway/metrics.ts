// Prometheus metrics of the gateway (prom-client), on a registry of their own so several
// gateways in one process (tests) never collide. The scheduler loop reports through the
// LoopObserver methods (a finished request's trace becomes one observation per phase, labelled
// with its path and degree); HTTP metrics come from hooks in plugins/metrics.ts.
import client from 'prom-client';
import type { ClusterState } from './cluster/cluster-state.js';
import type { LoopObserver } from './scheduler/loop.js';
import { namedPhases, type RequestTrace } from './scheduler/trace.js';

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export class GatewayMetrics implements LoopObserver {
  readonly registry = new client.Registry();
  readonly httpRequests = new client.Counter({
    name: 'paraserve_http_requests_total',
    help: 'HTTP requests answered, by route and status',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [this.registry],
  });
  readonly httpDuration = this.latencyHistogram('paraserve_http_request_duration_seconds', 'Time from request arrival to the end of the response (whole stream for SSE)', ['method', 'route'] as const);
  readonly timeToFirstToken = this.latencyHistogram('paraserve_time_to_first_token_seconds', 'Time from request arrival to the first generated token, by model', ['model'] as const);
  readonly tokensGenerated = new client.Counter({
    name: 'paraserve_generated_tokens_total',
    help: 'Tokens received from workers, by model',
    labelNames: ['model'] as const,
    registers: [this.registry],
  });
  readonly modelLoads = new client.Counter({
    name: 'paraserve_model_loads_total',
    help: 'LoadStage calls finished, by model and outcome',
    labelNames: ['model', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly modelLoadDuration = this.latencyHistogram('paraserve_model_load_duration_seconds', 'Time from starting a LoadStage to READY (or failure), by model', ['model'] as const);

  readonly consolidation = this.latencyHistogram('paraserve_consolidation_seconds', "Time from a pipeline's READY until the model's whole-model instance loaded in the background is READY, by model", ['model'] as const);

  readonly queuedRequests = new client.Gauge({
    name: 'paraserve_queued_requests',
    help: "Requests waiting in each model's queue (admitted, not yet placed on an instance)",
    labelNames: ['model'] as const,
    registers: [this.registry],
  });

  readonly swaps = this.latencyHistogram('paraserve_swap_seconds', 'Time of each SwapIn (in) and SwapOut (out) the gateway asked of a worker, by model, direction and outcome', ['model', 'direction', 'outcome'] as const);

  readonly requestPhases = this.latencyHistogram('paraserve_request_phase_seconds', 'Time of each phase of a completed request (queue, swap_in, load, fetch, copy, init, first_token, prefill, decode), by path (warm|swap|cold) and pipeline degree', ['phase', 'path', 'degree'] as const);

  constructor(cluster: ClusterState) {
    new client.Gauge({
      name: 'paraserve_workers',
      help: 'Registered workers, by state',
      labelNames: ['state'] as const,
      registers: [this.registry],
      collect() {
        for (const [state, n] of Object.entries(cluster.countByState())) this.set({ state }, n);
      },
    });
    client.collectDefaultMetrics({ register: this.registry, prefix: 'paraserve_gateway_' });
  }

  /** A histogram of seconds on this registry, with the latency buckets every timing shares. */
  private latencyHistogram<T extends string>(name: string, help: string, labelNames: readonly T[]): client.Histogram<T> {
    return new client.Histogram({ name, help, labelNames, buckets: LATENCY_BUCKETS, registers: [this.registry] });
  }

  loadFinished(model: string, outcome: 'ok' | 'error', seconds: number): void {
    this.modelLoads.inc({ model, outcome });
    this.modelLoadDuration.observe({ model }, seconds);
  }

  consolidated(model: string, seconds: number): void {
    this.consolidation.observe({ model }, seconds);
  }

  queued(model: string, waiting: number): void {
    this.queuedRequests.set({ model }, waiting);
  }

  swapped(model: string, direction: 'in' | 'out', outcome: 'ok' | 'error', seconds: number): void {
    this.swaps.observe({ model, direction, outcome }, seconds);
  }

  firstToken(model: string, seconds: number): void {
    this.timeToFirstToken.observe({ model }, seconds);
  }

  tokenGenerated(model: string): void {
    this.tokensGenerated.inc({ model });
  }

  /** Requests that failed or never ran anywhere are left out: their phases would mislead. */
  requestTraced(trace: RequestTrace): void {
    if (trace.status !== 'ok' || trace.path === null) return;
    const labels = { path: trace.path.kind, degree: String(trace.path.kind === 'swap' ? 1 : trace.path.degree) };
    for (const [phase, ms] of namedPhases(trace.timings)) {
      if (ms !== null) this.requestPhases.observe({ ...labels, phase }, ms / 1000);
    }
  }
}
