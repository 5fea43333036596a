// Checkpoints and resume: 10 steps straight equal 5 + resume + 5, bit for bit; a save killed
// with SIGKILL leaves the newest complete checkpoint loadable; mismatches are clear errors.
import test from 'ava'
import { spawn } from 'node:child_process'
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Trainer, listCheckpoints, loadData, readMetrics, resolveCheckpoint, type StepInfo, type TrainerOptions } from '../src'
import { snapshot, texts, tinyLora } from './helpers/train-data'
import { tempDir } from './helpers/temp'
import { readOptimizerState } from '../src/train/optimizer-file'

const OPTS = { maxSteps: 10, batchSize: 2, gradientAccumulationSteps: 2, learningRate: 5e-3, warmupSteps: 3, lrSchedule: 'cosine', seed: 3 } as const

async function run(opts: Partial<TrainerOptions>, abortAt?: number): Promise<{ losses: number[]; params: Map<string, Float32Array> }> {
  const peft = await tinyLora({ loraDropout: 0.1 })
  const { train } = await loadData(texts(7), peft.tokenizer)
  const ac = new AbortController()
  const trainer = new Trainer(peft, { train, ...OPTS, ...opts, signal: ac.signal })
  const losses: number[] = []
  trainer.on('step', (s: StepInfo) => (losses.push(s.loss), s.step === abortAt && ac.abort()))
  await trainer.train()
  const params = await snapshot(peft)
  peft.dispose()
  return { losses, params }
}

test('10 steps straight equal 5 steps + resume + 5 steps, bit for bit (dropout, accumulation, epochs, schedule)', async (t) => {
  const straight = await run({})
  const out = tempDir(t)
  const first = await run({ output: out }, 5)
  t.is(first.losses.length, 5)
  const second = await run({ output: out, resumeFromCheckpoint: out })
  t.deepEqual([...first.losses, ...second.losses], straight.losses)
  t.deepEqual(second.params, straight.params)
  t.deepEqual(readMetrics(join(out, 'metrics.jsonl')).map((m) => m.step), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
})

test('SIGKILL during a save: the partial checkpoint is never picked up, the newest complete one resumes', async (t) => {
  const out = tempDir(t)
  const child = spawn(process.execPath, ['--import=tsx', join(__dirname, 'helpers', 'ckpt-child.ts'), out, '3'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  child.stderr.on('data', (d) => (err += d))
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('PAUSED') && resolve())
    child.on('exit', (code) => reject(new Error(`child exited (${code}) before pausing: ${err}`)))
  })
  child.kill('SIGKILL')
  await new Promise((r) => child.on('exit', r))
  const dir = join(out, 'checkpoints')
  t.true(readdirSync(dir).some((n) => n.startsWith('.tmp-step-00000003')), 'the killed save left a partial folder')
  t.deepEqual(listCheckpoints(dir).map((c) => c.step), [1, 2])
  t.is(resolveCheckpoint(out), join(dir, 'step-00000002'))
  const peft = await tinyLora()
  const { train } = await loadData(texts(8), peft.tokenizer)
  const trainer = new Trainer(peft, { train, output: out, maxSteps: 4, batchSize: 2, resumeFromCheckpoint: out })
  const steps: number[] = []
  trainer.on('step', (s: StepInfo) => steps.push(s.step))
  await trainer.train()
  t.deepEqual(steps, [3, 4])
  t.false(readdirSync(dir).some((n) => n.startsWith('.tmp-')), 'leftovers are swept')
  peft.dispose()
})

test('a checkpoint of another model or method, or none at all, is a clear error', async (t) => {
  const out = tempDir(t)
  const base = await run({ output: out, maxSteps: 1 })
  t.is(base.losses.length, 1)
  const resume = async (opts: { r?: number } = {}) => {
    const peft = await tinyLora({ loraDropout: 0.1, ...opts })
    const { train } = await loadData(texts(4), peft.tokenizer)
    try {
      await new Trainer(peft, { train, maxSteps: 2, resumeFromCheckpoint: out }).train()
    } finally {
      peft.dispose()
    }
  }
  await t.throwsAsync(resume({ r: 8 }), { message: /config differs.*r: checkpoint 4, model 8/ })
  const stateFile = join(out, 'checkpoints', 'step-00000001', 'trainer_state.json')
  const state = readFileSync(stateFile, 'utf8')
  writeFileSync(stateFile, state.replace('"peft_type": "LORA"', '"peft_type": "IA3"'))
  await t.throwsAsync(resume(), { message: /holds a IA3 adapter, but the model carries a LORA adapter/ })
  writeFileSync(stateFile, state.replace('"hidden_size": 64', '"hidden_size": 576'))
  await t.throwsAsync(resume(), { message: /different base model \(hidden_size: checkpoint 576, model 64\)/ })
  writeFileSync(stateFile, state)
  await t.notThrowsAsync(resume())

  const empty = tempDir(t)
  mkdirSync(join(empty, 'checkpoints', '.tmp-step-00000004-1-1'), { recursive: true })
  const peft = await tinyLora()
  const { train } = await loadData(texts(4), peft.tokenizer)
  await t.throwsAsync(new Trainer(peft, { train, resumeFromCheckpoint: empty }).train(), { message: /no complete checkpoint in/ })
  await t.throwsAsync(new Trainer(peft, { train, resumeFromCheckpoint: join(empty, 'nope') }).train(), { message: /does not exist/ })
  peft.dispose()
})

test('optimizer state is written as safetensors (raw float32, no JSON); an old checkpoint with optimizer.json still resumes bit for bit', async (t) => {
  const straight = await run({})
  const out = tempDir(t)
  await run({ output: out }, 5)
  const dir = resolveCheckpoint(out)
  t.deepEqual(readdirSync(dir).sort(), ['adapter', 'optimizer.safetensors', 'trainer_state.json'])
  const file = readFileSync(join(dir, 'optimizer.safetensors'))
  const peft = await tinyLora()
  const numel = peft.namedParameters({ trainableOnly: true }).reduce((n, [, p]) => n + p.shape.reduce((a, b) => a * b, 1), 0)
  peft.dispose()
  t.is(file.byteLength, 8 + Number(file.readBigUInt64LE(0)) + numel * 2 * 4, 'AdamW: two float32 moments per parameter value, stored raw')

  // The format of earlier versions: the state dict as JSON with base64 tensors.
  const sd = readOptimizerState(dir)
  for (const entry of Object.values(sd.state)) {
    for (const [k, v] of Object.entries(entry)) {
      const d = (v as { data?: unknown }).data
      if (d instanceof Float32Array) entry[k] = { ...(v as object), data: Buffer.from(d.buffer, d.byteOffset, d.byteLength).toString('base64') }
    }
  }
  writeFileSync(join(dir, 'optimizer.json'), JSON.stringify(sd))
  rmSync(join(dir, 'optimizer.safetensors'))
  const resumed = await run({ output: out, resumeFromCheckpoint: out })
  t.deepEqual(resumed.params, straight.params)
})
