// Specs clean up their temp folders, passed or failed: every one is made by helpers/temp.ts,
// which removes it at the test's teardown and, at the latest, when the worker process exits.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { liveTempDirs, tempDir } from './helpers/temp'

const ROOT = join(__dirname, '..')

test('tempDir(t) is removed by the test teardown, with its contents', (t) => {
  const teardowns: (() => void)[] = []
  const dir = tempDir({ teardown: (fn) => teardowns.push(fn) }, 'peft-node-temp-spec-')
  writeFileSync(join(dir, 'f'), 'x')
  t.true(existsSync(dir))
  t.true(liveTempDirs().includes(dir))
  for (const fn of teardowns) fn() // ava runs teardowns whether the test passed or failed
  t.false(existsSync(dir))
  t.false(liveTempDirs().includes(dir))
})

test('folders made outside a test, or left by a crash, are removed when the process exits', (t) => {
  for (const ending of ['process.exit(3)', "throw new Error('boom')", 'undefined']) {
    const code = `const d = require('./__test__/helpers/temp').tempDir(undefined, 'peft-node-temp-spec-'); require('fs').writeFileSync(d + '/f', 'x'); console.log(d); ${ending}`
    const r = spawnSync(process.execPath, ['--import=tsx', '-e', code], { cwd: ROOT, encoding: 'utf8' })
    const dir = r.stdout.trim()
    t.true(dir.length > 0, r.stderr)
    t.false(existsSync(dir), `${ending}: ${dir} was left behind`)
  }
})

test('no spec (nor the package smoke test) makes temp folders any other way', (t) => {
  const files = [
    ...readdirSync(join(ROOT, '__test__'), { recursive: true, encoding: 'utf8' }).map((f) => join('__test__', f)),
    ...readdirSync(join(ROOT, 'scripts', 'smoke')).map((f) => join('scripts', 'smoke', f)),
  ].filter((f) => /\.(ts|cjs|mjs)$/.test(f) && f !== join('__test__', 'helpers', 'temp.ts'))
  const offenders = files.filter((f) => /\bmkdtemp(Sync)?\(.*tmpdir\(\)|\btmpdir\(\)/.test(readFileSync(join(ROOT, f), 'utf8')))
  t.deepEqual(offenders, [], 'specs: tempDir(t) from helpers/temp.ts; the smoke test: its working folder')
})
