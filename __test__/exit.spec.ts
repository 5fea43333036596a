// An exiting process does not wait for native loops: process.exit() during a generate, and
// the CLI's second Ctrl-C, quit at once (Node joins the native thread pool before exiting, so
// a generate that does not check for cancellation held the exit for the whole generation).
import test from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MODEL_DIR } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

/** The fixture model with a long context, so that a generation can run for minutes. */
function longContextModel(t: Parameters<typeof tempDir>[0]): string {
  const dir = tempDir(t)
  for (const f of ['model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(MODEL_DIR, f), join(dir, f))
  const config = JSON.parse(readFileSync(join(MODEL_DIR, 'config.json'), 'utf8'))
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, max_position_embeddings: 100_000 }))
  return dir
}

/** Resolves when `text` appears on the child's stdout; rejects if it exits first. */
function waitFor(child: ChildProcess, text: string): Promise<void> {
  let err = ''
  child.stderr!.on('data', (d) => (err += d))
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout!.on('data', (d) => (out += d) && out.includes(text) && resolve())
    child.on('exit', (code) => reject(new Error(`child exited (${code}) early: ${err}`)))
  })
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => (child.exitCode != null ? resolve(child.exitCode) : child.on('exit', (code) => resolve(code))))
}

test('process.exit() during a generate exits at once', async (t) => {
  const child = spawn(process.execPath, ['--import=tsx', join(__dirname, 'helpers', 'exit-child.ts'), longContextModel(t)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => child.kill('SIGKILL'))
  await waitFor(child, 'GENERATING')
  const started = Date.now()
  const code = await Promise.race([exited(child), new Promise((r) => setTimeout(() => r('still running'), 5000))])
  t.is(code, 0)
  t.true(Date.now() - started < 1500, `exit took ${Date.now() - started} ms`)
})

test("the CLI's second Ctrl-C quits a generate at once", async (t) => {
  const bin = join(__dirname, '..', 'dist', 'cli', 'main.js')
  const args = ['generate', '--model', longContextModel(t), '--prompt', 'Free software', '--max-tokens', '60000', '--raw', '--temperature', '1', '--seed', '3']
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => child.kill('SIGKILL'))
  let out = ''
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d) => (out += d) && out.length > 20 && resolve())
    child.on('exit', (code) => reject(new Error(`CLI exited (${code}) before generating`)))
  })
  child.kill('SIGINT')
  await new Promise((r) => setTimeout(r, 200))
  child.kill('SIGINT')
  const started = Date.now()
  const code = await Promise.race([exited(child), new Promise((r) => setTimeout(() => r('still running'), 5000))])
  // 130: the second Ctrl-C quit; 0: the first one's stop (after the current token) had already
  // ended the command, which a fast machine manages within the 200 ms. Either way, at once.
  t.true(code === 130 || code === 0, `exit code ${code}`)
  t.true(Date.now() - started < 1500, `exit took ${Date.now() - started} ms`)
})
