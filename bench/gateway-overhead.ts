// What the gateway costs: requests/s and latency of a completion through gateway + worker,
// against the same generation asked of the worker directly over gRPC, in the same run with
// the same tiny model, prompt and token count. The difference is the gateway's overhead
// (HTTP, validation, tokenisation, scheduling, detokenisation, the extra hop).
//   npm run build && node dist/bench/gateway-overhead.js [--requests 300] [--concurrency 16] [--max-tokens 16]
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { Agent, request } from 'undici';
import { loadParaserveProto } from '../protos/load.js';
import type { WorkerClient } from '../protos/generated/paraserve/v1/Worker.js';
import { writeSyntheticModel } from '../worker/models/synthetic.js';
import { ModelTokenizer } from '../worker/models/tokenizer.js';
import { benchProcesses, closeBenchHttp, getJson, percentile, postJson, waitFor } from './cluster.js';

const { values: flags } = parseArgs({
  options: {
    requests: { type: 'string', default: '300' },
    concurrency: { type: 'string', default: '16' },
    'max-tokens': { type: 'string', default: '16' },
    preset: { type: 'string', default: 'tiny-llama3' },
  },
});
const REQUESTS = Number(flags.requests);
const CONCURRENCY = Number(flags.concurrency);
const MAX_TOKENS = Number(flags['max-tokens']);
const PROMPT = 'Serverless inference keeps many models in host memory and swaps them onto GPUs per request.';

interface WorkersReply {
  data: { id: string; address: string; instances: { instanceId: string; residency: string }[] }[];
}

const http = new Agent({ connections: CONCURRENCY * 2 });

async function viaGateway(gatewayUrl: string, model: string): Promise<number> {
  const res = await request(`${gatewayUrl}/v1/completions`, {
    method: 'POST',
    dispatcher: http,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0 }),
  });
  const body = (await res.body.json()) as { usage?: { completion_tokens: number }; error?: { message: string } };
  if (res.statusCode !== 200 || body.usage === undefined) throw new Error(`gateway: ${res.statusCode} ${body.error?.message}`);
  return body.usage.completion_tokens;
}

function viaWorker(client: WorkerClient, instanceId: string, promptIds: number[], stopIds: number[]): Promise<number> {
  return new Promise((resolve, reject) => {
    let tokens = 0;
    const call = client.Generate(
      { requestId: '', instanceId, promptTokenIds: promptIds, maxTokens: MAX_TOKENS, sampling: { temperature: 0, topP: 1 }, stopTokenIds: stopIds },
      { deadline: Date.now() + 30_000 },
    );
    call.on('data', (event: { token?: unknown }) => {
      if (event.token) tokens++;
    });
    call.on('error', reject);
    call.on('end', () => resolve(tokens));
  });
}

interface PathResult {
  p50: number;
  p90: number;
  p99: number;
  reqPerS: number;
  tokens: number;
}

/** Latency one request at a time, then throughput with CONCURRENCY requests in flight. */
async function measure(run: () => Promise<number>): Promise<PathResult> {
  for (let i = 0; i < 20; i++) await run();
  const latencies: number[] = [];
  let tokens = 0;
  for (let i = 0; i < REQUESTS; i++) {
    const start = performance.now();
    tokens = await run();
    latencies.push(performance.now() - start);
  }
  latencies.sort((a, b) => a - b);
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next++ < REQUESTS) await run();
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  return { p50: percentile(latencies, 0.5)!, p90: percentile(latencies, 0.9)!, p99: percentile(latencies, 0.99)!, reqPerS: REQUESTS / seconds, tokens };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'paraserve-bench-'));
  const modelDir = path.join(dir, 'model');
  await writeSyntheticModel({ dir: modelDir, preset: flags.preset!, seed: 0, dtype: null, sharded: false }, null);
  const processes = benchProcesses(dir);
  const gateway = processes.start('gateway', ['gateway', '--port', '0', '--data-dir', dir, '--log-level', 'warn'], {});
  const gatewayUrl = (await gateway.ready(30_000)).url!;
  const worker = processes.start('worker', ['worker', '--gateway', gatewayUrl, '--port', '0', '--log-level', 'warn'], {});
  await worker.ready(30_000);
  try {
    await postJson(`${gatewayUrl}/admin/models`, { name: 'bench', source: pathToFileURL(modelDir).href, files: null, ttftSloMs: null }, 201);
    await waitFor('the worker to register', async () => ((await getJson<WorkersReply>(`${gatewayUrl}/admin/workers`)).data.length > 0 ? true : null), 30_000);
    await viaGateway(gatewayUrl, 'bench'); // cold start: loads the model on the worker
    const { address, instanceId } = await waitFor(
      'the instance to be on the device',
      async () => {
        for (const w of (await getJson<WorkersReply>(`${gatewayUrl}/admin/workers`)).data) {
          const instance = w.instances.find((i) => i.residency === 'ON_DEVICE');
          if (instance) return { address: w.address, instanceId: instance.instanceId };
        }
        return null;
      },
      30_000,
    );

    const tokenizer = ModelTokenizer.fromJson(await readFile(path.join(modelDir, 'tokenizer.json'), 'utf8'), await readFile(path.join(modelDir, 'tokenizer_config.json'), 'utf8'));
    const config = JSON.parse(await readFile(path.join(modelDir, 'generation_config.json'), 'utf8')) as { eos_token_id: number[] };
    const promptIds = tokenizer.encode(PROMPT, true);
    const stopIds = [...new Set([...tokenizer.eosTokenIds, ...config.eos_token_id])];
    const proto = loadParaserveProto();
    const client = new proto.paraserve.v1.Worker(address, grpc.credentials.createInsecure());

    const direct = await measure(() => viaWorker(client, instanceId, promptIds, stopIds));
    const gatewayed = await measure(() => viaGateway(gatewayUrl, 'bench'));
    client.close();

    const row = (name: string, r: PathResult): string =>
      `${name.padEnd(22)} ${r.p50.toFixed(2).padStart(8)} ${r.p90.toFixed(2).padStart(8)} ${r.p99.toFixed(2).padStart(8)} ${r.reqPerS.toFixed(0).padStart(8)} ${String(r.tokens).padStart(7)}`;
    console.log(`gateway overhead — preset ${flags.preset}, ${MAX_TOKENS} max tokens, ${REQUESTS} requests, concurrency ${CONCURRENCY}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model})`);
    console.log(`${'path'.padEnd(22)} ${'p50 ms'.padStart(8)} ${'p90 ms'.padStart(8)} ${'p99 ms'.padStart(8)} ${'req/s'.padStart(8)} ${'tokens'.padStart(7)}`);
    console.log(row('worker gRPC (baseline)', direct));
    console.log(row('gateway HTTP + worker', gatewayed));
    console.log(
      `added latency p50 ${(gatewayed.p50 - direct.p50).toFixed(2)} ms (×${(gatewayed.p50 / direct.p50).toFixed(2)}); throughput ×${(gatewayed.reqPerS / direct.reqPerS).toFixed(2)} of direct`,
    );
    if (gatewayed.tokens !== direct.tokens) console.log(`note: token counts differ (gateway ${gatewayed.tokens}, direct ${direct.tokens})`);
  } finally {
    await processes.stop();
    await http.close();
    await closeBenchHttp();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
