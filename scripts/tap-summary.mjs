#!/usr/bin/env node
// Test reporter for `npm test`: tap pipes its raw TAP stream here. We print one line per
// test file, the details of every failed assertion, and end with the plain line
// "N passed, N failed[, N skipped]" that CI reads (tap's own summary is not read by CI).
// Exit status stays tap's: this program only reports.
import { Parser } from 'tap-parser';

const files = new Parser();
let passed = 0;
let failed = 0;
let skipped = 0;

files.on('assert', (result) => {
  const mark = result.ok ? 'ok    ' : 'FAILED';
  const time = result.time ? ` (${(result.time / 1000).toFixed(1)}s)` : '';
  const note = result.skip ? ` # SKIP ${result.skip === true ? '' : result.skip}` : '';
  process.stdout.write(`${mark} ${result.name}${time}${note}\n`);
});

// Counts leaf assertions: an assert that closes a subtest summarises its child, not a leaf.
// A failed subtest none of whose leaves failed (a crash, a timeout, a bad exit) counts once.
function countLeaves(parser) {
  const state = { failedLeaves: 0 };
  const children = [];
  parser.on('child', (child) => children.push(countLeaves(child)));
  parser.on('assert', (result) => {
    const child = children.shift();
    if (child) {
      state.failedLeaves += child.failedLeaves;
      if (!result.ok && !result.skip && !result.todo && child.failedLeaves === 0) {
        state.failedLeaves++;
        report(result, { exitCode: result.diag?.exitCode, signal: result.diag?.signal, expired: result.diag?.expired });
      }
      return;
    }
    if (result.skip || result.todo) {
      skipped++;
      const why = result.skip === true || result.skip === undefined ? '' : ` — ${result.skip}`;
      process.stdout.write(`  skipped: ${result.fullname || result.name}${why}\n`);
    }
    else if (result.ok) passed++;
    else {
      state.failedLeaves++;
      report(result, result.diag);
    }
  });
  parser.on('comment', (comment) => {
    // Skip reasons printed by tests (GPU-only tests in CI) are worth showing.
    if (/skip/i.test(comment)) process.stdout.write(`  ${comment.trim()}\n`);
  });
  return state;
}
countLeaves(files);

function report(result, diag) {
  failed++;
  process.stdout.write(`\n  not ok: ${result.fullname || result.name}\n`);
  if (diag) {
    const lines = JSON.stringify(diag, null, 2).split('\n').slice(0, 40);
    process.stdout.write(lines.map((line) => `    ${line}`).join('\n') + '\n');
  }
}

files.on('bailout', (reason) => {
  failed++;
  process.stdout.write(`bail out: ${reason}\n`);
});

process.stdin.on('data', (chunk) => {
  files.write(chunk);
});
process.stdin.on('end', () => {
  files.end();
  const tail = skipped ? `, ${skipped} skipped` : '';
  process.stdout.write(`\n${passed} passed, ${failed} failed${tail}\n`);
});
