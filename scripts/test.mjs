#!/usr/bin/env node
// `npm test`: the Rust core's tests (cargo test) then the JS specs (ava), with one
// closing line that any CI can read: `N passed, N failed`. Exits non-zero on any failure.
import { execFileSync, spawn } from 'node:child_process'

function run(cmd, args, env = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    const relay = (stream, sink) =>
      stream.on('data', (d) => {
        out += d
        sink.write(d)
      })
    relay(child.stdout, process.stdout)
    relay(child.stderr, process.stderr)
    child.on('close', (code) => resolve({ code: code ?? 1, out }))
  })
}

// A fresh clone has no native addon yet: build it once rather than fail every JS spec.
import { readdirSync } from 'node:fs'
if (!readdirSync('.').some((f) => /^peft-node\..*\.node$/.test(f))) {
  const build = await run('npm', ['run', 'build:native'])
  if (build.code !== 0) {
    console.log('\n0 passed, 1 failed')
    process.exit(1)
  }
}
// The CLI specs also run the built bin (dist/): compile the TypeScript so it matches src/.
if (!process.argv.includes('--rust')) {
  const ts = await run('npm', ['run', 'build:ts'])
  if (ts.code !== 0) {
    console.log('\n0 passed, 1 failed')
    process.exit(1)
  }
}

let passed = 0
let failed = 0
let skipped = 0

const rustOnly = process.argv.includes('--rust')
const jsOnly = process.argv.includes('--js')

if (!jsOnly) {
  // The same packages and target as the addon's `napi build --platform --release` (it passes
  // --target explicitly and builds peft-napi, whose dependencies unify some features): the
  // tests then reuse its compiled dependencies and peft-core lib instead of building them all
  // a second time in target/release. peft-napi has no test target (lib test = false).
  const host = execFileSync('rustc', ['-vV'], { encoding: 'utf8' }).match(/^host: (\S+)$/m)[1]
  const cargoArgs = ['test', '--release', '-p', 'peft-core', '-p', 'peft-napi', '--target', host]
  const cargo = await run('cargo', cargoArgs, { RAYON_NUM_THREADS: process.env.RAYON_NUM_THREADS ?? '2' })
  for (const m of cargo.out.matchAll(/test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored/g)) {
    passed += Number(m[1])
    failed += Number(m[2])
    skipped += Number(m[3])
  }
  if (cargo.code !== 0 && failed === 0) failed += 1 // a build failure counts
}

if (!rustOnly) {
  const ava = await run('npx', ['ava', '--tap'])
  const num = (k) => Number((ava.out.match(new RegExp(`^# ${k} (\\d+)$`, 'm')) ?? [0, 0])[1])
  passed += num('pass')
  failed += num('fail')
  skipped += num('skip') + num('todo')
  if (ava.code !== 0 && num('fail') === 0) failed += 1
}

console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`)
process.exit(failed > 0 || passed === 0 ? 1 : 0)
