// The `peft-node` bin is executable however dist/ was built: `npm run build:ts`, and the prepack
// that `npm pack` and `npm run test:package` run (it deletes dist/ and rebuilds it). tsc writes
// files 0644, so without scripts/chmod-bin.mjs `npx peft-node` failed with "Permission denied".
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tempDir } from './helpers/temp'

const ROOT = join(__dirname, '..')
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))

test('build:ts (and so prepack) marks every bin executable', (t) => {
  t.regex(pkg.scripts['build:ts'], /node scripts\/chmod-bin\.mjs$/)
  t.regex(pkg.scripts.prepack, /npm run build:ts/)
  // What the script does, on a copy: a bin as tsc leaves it (0644) becomes 0755.
  const dir = tempDir(t)
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'x', bin: { x: 'dist/cli/main.js' } }))
  mkdirSync(join(dir, 'dist', 'cli'), { recursive: true })
  writeFileSync(join(dir, 'dist', 'cli', 'main.js'), '#!/usr/bin/env node\n')
  chmodSync(join(dir, 'dist', 'cli', 'main.js'), 0o644)
  const r = spawnSync(process.execPath, [join(ROOT, 'scripts', 'chmod-bin.mjs'), dir], { encoding: 'utf8' })
  t.is(r.status, 0, r.stderr)
  t.is(statSync(join(dir, 'dist', 'cli', 'main.js')).mode & 0o777, 0o755)
  const missing = tempDir(t)
  writeFileSync(join(missing, 'package.json'), JSON.stringify({ name: 'x', bin: { x: 'dist/cli/main.js' } }))
  const m = spawnSync(process.execPath, [join(ROOT, 'scripts', 'chmod-bin.mjs'), missing], { encoding: 'utf8' })
  t.is(m.status, 1)
  t.regex(m.stderr, /chmod-bin: dist\/cli\/main\.js \(package\.json "bin" x\) does not exist: run tsc first/)
})

test('the built bin runs as a program (npm test builds dist/ with build:ts first)', (t) => {
  const r = spawnSync(join(ROOT, pkg.bin['peft-node']), ['help'], { encoding: 'utf8' })
  t.is(r.error, undefined, 'spawned (no EACCES)')
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /^peft-node <command> \[options\]/)
})

test('output piped into a reader that stops early (| head) ends quietly, not with an EPIPE stack trace', (t) => {
  // `true` exits without reading, so every write of the bin meets a closed pipe.
  const r = spawnSync('sh', ['-c', `"${process.execPath}" "${join(ROOT, pkg.bin['peft-node'])}" help | true`], { encoding: 'utf8' })
  t.is(r.status, 0)
  t.is(r.stderr, '')
})
