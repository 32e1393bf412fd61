// Builds native/build/Release/paraserve.node with cmake-js (npm's "install" script and
// `npm run build:native`). It checks the tools first so a missing one fails in one line
// that says what to install, then runs `cmake-js configure` and `cmake-js build` (what
// `cmake-js compile` does, except that configure runs every time: that takes a second and
// re-detects CUDA/cuBLAS/NCCL and PARASERVE_CUDA on each build, where compile would reuse
// a stale cache), and ends with the CUDA decision CMakeLists.txt made.
//
// Environment: PARASERVE_CUDA=AUTO|ON|OFF (default AUTO: CUDA backend when CUDA, cuBLAS and
// NCCL are found; ON fails the build without them; OFF builds the CPU backend only).
// cmake-js builds against node-api-headers offline because native/package.json declares
// binary.napi_versions. Code generation is portable (x86-64-v2 plus runtime-dispatched
// AVX2 kernels, never -march=native) and CPU kernels use OpenMP when found: see
// native/CMakeLists.txt and native/src/cpu/CpuKernels.cpp for why.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = path.join(root, 'native');
const buildDir = path.join(nativeDir, 'build');
const cmakeJs = path.join(root, 'node_modules', '.bin', 'cmake-js');

function fail(reason) {
  console.error(`paraserve: ${reason}`);
  process.exit(1);
}

function runs(command) {
  return !spawnSync(command, ['--version'], { stdio: 'ignore' }).error;
}

function findCompiler() {
  const candidates = process.env.CXX ? [process.env.CXX] : ['c++', 'g++', 'clang++'];
  return candidates.find(runs) ?? null;
}

function cudaOption() {
  const value = (process.env.PARASERVE_CUDA ?? 'AUTO').toUpperCase();
  if (!['AUTO', 'ON', 'OFF'].includes(value)) {
    fail(`PARASERVE_CUDA must be AUTO, ON or OFF, got '${process.env.PARASERVE_CUDA}'`);
  }
  return value;
}

function runCmakeJs(command, args) {
  return new Promise((resolve) => {
    const child = spawn(cmakeJs, [command, ...args], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', (error) => fail(`could not run cmake-js: ${error.message}`));
    child.on('exit', (code, signal) => {
      if (code !== 0) fail(`native build failed: cmake-js ${command} ${signal ?? `exited with ${code}`} (see above)`);
      resolve();
    });
  });
}

function cachedDecision() {
  const cache = readFileSync(path.join(buildDir, 'CMakeCache.txt'), 'utf8');
  const match = /^PARASERVE_CUDA_DECISION:INTERNAL=(.*)$/m.exec(cache);
  return match?.[1] ?? 'CUDA decision missing from CMakeCache.txt';
}

if (!runs('cmake')) fail('cmake not found — apt-get install cmake g++');
const compiler = findCompiler();
if (compiler === null) fail('no C++ compiler found (c++, g++ or clang++) — apt-get install g++');
if (!existsSync(cmakeJs)) fail('cmake-js not found in node_modules/.bin — run npm install');

const args = ['--directory', nativeDir, '--out', buildDir, '--config', 'Release', `--CDPARASERVE_CUDA=${cudaOption()}`];
if (process.env.CXX) args.push('--cxx', compiler);
await runCmakeJs('configure', args);
await runCmakeJs('build', [...args, '--parallel', String(os.availableParallelism())]);

const binary = path.join(buildDir, 'Release', 'paraserve.node');
if (!existsSync(binary)) fail(`native build finished but ${path.relative(root, binary)} is missing`);
console.log(`paraserve: built ${path.relative(root, binary)}; ${cachedDecision()}`);
