// The CLI's pure decisions, in-process: table layout, size and option parsing, error
// reporting, and `paraserve up`'s plan (child arguments, what to do about an existing
// registration of the demo model, the curl line).
import t from 'tap';
import { InvalidArgumentError } from 'commander';
import { httpErrorLine } from '../../gateway/cli/admin-client.js';
import { CliError, formatCommanderError, reportError } from '../../gateway/cli/errors.js';
import { collectList, parseBytes, parseHttpUrl, parsePort, resolvePath } from '../../gateway/cli/options.js';
import { formatAge, formatBytes, formatCount, formatTable } from '../../gateway/cli/output.js';
import { curlLine, decideRegistration, gatewayArgs, workerArgs, type UpPlanInput } from '../../gateway/cli/up-plan.js';
import type { ModelRecord } from '../../gateway/registry/registry.js';

t.test('tables align columns and say (none) when empty', async (t) => {
  t.equal(
    formatTable(['NAME', 'SIZE'], [['tiny', '1.0 MiB'], ['a-longer-name', '12 B']]),
    'NAME           SIZE\ntiny           1.0 MiB\na-longer-name  12 B\n',
  );
  t.equal(formatTable(['NAME'], []), '(none)\n');
});

t.test('numbers for people', async (t) => {
  t.equal(formatBytes(512), '512 B');
  t.equal(formatBytes(1536), '1.5 KiB');
  t.equal(formatBytes(13 * 1024 ** 3), '13.0 GiB');
  t.equal(formatCount(6_738_415_616), '6.7B');
  t.equal(formatCount(15_200_000), '15.2M');
  t.equal(formatCount(999), '999');
  t.equal(formatAge(10_000, 13_400), '3s ago');
  t.equal(formatAge(0, 600_000), '10m ago');
});

t.test('option parsers accept what operators write and reject the rest', async (t) => {
  t.equal(parseBytes('8GiB'), 8 * 1024 ** 3);
  t.equal(parseBytes('512MB'), 512e6);
  t.equal(parseBytes('1.5 gib'), 1.5 * 1024 ** 3);
  t.equal(parseBytes('4096'), 4096);
  t.throws(() => parseBytes('lots'), InvalidArgumentError);
  t.throws(() => parseBytes('8 parsecs'), InvalidArgumentError);
  t.equal(parsePort('0'), 0);
  t.equal(parsePort('8080'), 8080);
  t.throws(() => parsePort('65536'), InvalidArgumentError);
  t.throws(() => parsePort('80.5'), InvalidArgumentError);
  t.equal(parseHttpUrl('http://10.0.0.1:8080/'), 'http://10.0.0.1:8080');
  t.throws(() => parseHttpUrl('10.0.0.1:8080'), InvalidArgumentError);
  t.same(collectList('a, b,,c', ['x']), ['x', 'a', 'b', 'c']);
  t.notOk(resolvePath('~/x').includes('~'));
});

t.test('errors: a line for the operator; built-in JS errors are called internal', async (t) => {
  t.match(reportError(new CliError('model tiny not found', 3)), { line: 'model tiny not found', exitCode: 3 });
  const sys = Object.assign(new Error('listen EADDRINUSE: address already in use 127.0.0.1:8080'), { code: 'EADDRINUSE' });
  t.equal(reportError(sys).line, 'listen EADDRINUSE: address already in use 127.0.0.1:8080');
  class BackendUnavailableError extends Error {
    override name = 'BackendUnavailableError';
  }
  t.equal(reportError(new BackendUnavailableError('CUDA backend not compiled in')).line, 'CUDA backend not compiled in');
  const bug = reportError(new TypeError('x is not a function'));
  t.match(bug.line, /^internal error: x is not a function/);
  t.not(bug.stack, null);
  t.equal(formatCommanderError("error: unknown option '--x'\n(Did you mean --y?)"), "paraserve: unknown option '--x'\n");
  t.equal(
    httpErrorLine(404, { error: { message: 'model "m" not found', type: 'invalid_request_error', param: 'name', code: null } }, ''),
    'model "m" not found (HTTP 404)',
  );
  t.match(httpErrorLine(401, null, 'Unauthorized'), /^Unauthorized \(HTTP 401\) \(pass --admin-token/);
});

const plan: UpPlanInput = { host: '127.0.0.1', port: 8080, workers: 2, dataDir: '/d', backend: 'cpu', logLevel: 'info' };

t.test('up starts each daemon as its own command with explicit flags', async (t) => {
  t.same(gatewayArgs(plan), ['gateway', '--host', '127.0.0.1', '--port', '8080', '--data-dir', '/d', '--log-level', 'info']);
  const w = workerArgs(plan, 1, 'http://127.0.0.1:8080');
  t.equal(w[0], 'worker');
  t.equal(w[w.indexOf('--gateway') + 1], 'http://127.0.0.1:8080');
  t.equal(w[w.indexOf('--id') + 1], 'worker-1');
  t.equal(w[w.indexOf('--port') + 1], '0', 'ephemeral gRPC port');
  t.equal(w[w.indexOf('--backend') + 1], 'cpu');
});

function record(source: string): ModelRecord {
  return {
    name: 'demo',
    source,
    architecture: 'llama',
    parameters: 1,
    bytes: 1,
    layers: 1,
    contextLength: 1,
    ttftSloMs: null,
    gpuKeepAliveMs: null,
    hostKeepAliveMs: null,
    createdAt: '2025-01-01T00:00:00Z',
    files: [{ path: 'config.json', size: 1, sha256: 'a'.repeat(64), chunkBytes: 0, chunkSha256: [] }],
  };
}

t.test('up re-registers the demo model only when its source moved', async (t) => {
  const source = 'http://127.0.0.1:41000/demo';
  t.same(decideRegistration(null, source, false), { kind: 'register' });
  t.same(decideRegistration(record(source), source, false), { kind: 'keep' });
  t.same(decideRegistration(record(source), source, true), { kind: 'replace', reuseDigests: false });
  t.same(decideRegistration(record('http://127.0.0.1:39999/demo'), source, false), { kind: 'replace', reuseDigests: true });
  t.same(decideRegistration(record('http://127.0.0.1:39999/demo'), source, true), { kind: 'replace', reuseDigests: false });
  t.same(decideRegistration(record('https://models.example/demo'), source, false), { kind: 'foreign', source: 'https://models.example/demo' });
  t.same(decideRegistration(record('http://127.0.0.1:39999/other'), source, false), { kind: 'foreign', source: 'http://127.0.0.1:39999/other' });
});

t.test('the curl line is valid JSON in shell quotes', async (t) => {
  const line = curlLine('http://127.0.0.1:8080', "it's", false);
  t.match(line, /^curl http:\/\/127\.0\.0\.1:8080\/v1\/chat\/completions -H 'content-type: application\/json' -d '/);
  t.notMatch(line, /authorization/);
  t.match(curlLine('http://h:1', 'demo', true), /-H 'authorization: Bearer <your API key>'/);
  const body = /-d '(.*)'$/.exec(curlLine('http://h:1', 'demo', false))?.[1] ?? '';
  t.same(JSON.parse(body), { model: 'demo', messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 32 });
});
