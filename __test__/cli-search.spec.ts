// `peft-node search`: option errors before any work, and a short run that prints each trial and
// the Pareto front, appends the JSONL log and writes the best configuration.
import test from 'ava'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { main } from '../src/cli/main'
import { LlamaModel, PeftModel, applySearchConfig, checkSearchConfig, type SearchConfig } from '../src'
import { MODEL_DIR } from './helpers/fixtures'
import { capture } from './helpers/cli'
import { tempDir } from './helpers/temp'
import { completions, writeJsonl } from './helpers/train-data'

async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = capture()
  const code = await main(args, io)
  return { code, out: io.text(), err: io.errors() }
}

function dataDir(t: Parameters<typeof tempDir>[0]): string {
  const d = tempDir(t)
  const recs = completions(24)
  writeJsonl(join(d, 'train.jsonl'), recs.slice(0, 16))
  writeJsonl(join(d, 'valid.jsonl'), recs.slice(16))
  return d
}

test('search refuses bad options with one line naming the option', async (t) => {
  const data = dataDir(t)
  const cases: [string[], RegExp][] = [
    [['--data', data, '--budget', '100', '--trials', '2'], /^peft-node search: --model is required/],
    [['--model', MODEL_DIR, '--data', data, '--trials', '2'], /^peft-node search: --budget: expected an integer \(required\), found undefined/],
    [['--model', MODEL_DIR, '--data', data, '--budget', 'lots', '--trials', '2'], /^peft-node search: --budget: expected an integer, found lots/],
    [['--model', MODEL_DIR, '--data', data, '--budget', '100', '--trials', '2', '--budjet', '3'], /^peft-node search: --budjet: not an option of `search` \(did you mean --budget\?\)/],
    [['--model', MODEL_DIR, '--data', data, '--budget', '100', '--trials', '2', '--methods', 'lora,dora'], /^peft-node search: space\.methods: expected a non-empty list of none, lora, bottleneck, ia3/],
    [['--model', MODEL_DIR, '--data', data, '--budget', '100', '--trials', '2', '--lora-ranks', '2,x'], /^peft-node search: space\.loraRanks: expected a non-empty list of integers >= 1/],
    [['--model', MODEL_DIR, '--data', join(data, 'none'), '--budget', '100', '--trials', '2'], /no such data file or folder/],
  ]
  for (const [args, message] of cases) {
    const r = await run('search', ...args)
    t.is(r.code, 1, args.join(' '))
    t.regex(r.err, message, args.join(' '))
    t.is(r.err.trim().split('\n').length, 1, 'one error line')
  }
})

test('a short search prints the trials and the front, logs JSONL and writes a best.json that applySearchConfig builds', async (t) => {
  const dir = tempDir(t)
  const log = join(dir, 'trials.jsonl')
  const best = join(dir, 'best.json')
  const r = await run('search', '--model', MODEL_DIR, '--data', dataDir(t), '--budget', '1200', '--trials', '3', '--steps', '2', '--learning-rate', '1e-2',
    '--groups', '1', '--methods', 'lora,bottleneck', '--lora-ranks', '1,2', '--bottleneck-sizes', '1,2', '--prefix-lengths', '0,1', '--log', log, '--output', best)
  t.is(r.code, 0, r.err)
  t.regex(r.out, /^data: 16 training examples, 8 validation; budget 1,200 trainable parameters$/m)
  t.is(r.out.match(/^trial \d\/3 \((random|refine)\): (lora|bottleneck):[12]( prefix:1)?  params [\d,]+  train \d+\.\d{4}  valid \d+\.\d{4}  [\d.]+ s$/gm)?.length, 3)
  t.regex(r.out, /^done: 3 trials, \d+ candidates over the budget rejected untrained$/m)
  t.regex(r.out, /^Pareto front \(trainable parameters vs validation loss\):\n( +[\d,]+  \d+\.\d{4}  .+\n)+/m)
  const lines = readFileSync(log, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as { type: string; params: number; valLoss?: number })
  t.is(lines.filter((l) => l.type === 'trial').length, 3)
  t.true(lines.filter((l) => l.type === 'trial').every((l) => l.params <= 1200 && Number.isFinite(l.valLoss)))
  const saved = JSON.parse(readFileSync(best, 'utf8')) as { config: unknown; params: number; valLoss: number; adapters: Record<string, { peft_type: string }> }
  t.is(Math.min(...lines.filter((l) => l.type === 'trial').map((l) => l.valLoss!)), saved.valLoss)
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const peft = await applySearchConfig(model, checkSearchConfig(saved.config, 'best.json', 2))
  t.is(peft.trainableParameterCounts().trainable, saved.params, 'the saved configuration rebuilds with the searched parameter count')
  t.deepEqual(peft.activeAdapters, Object.keys(saved.adapters))
  peft.dispose()
})

test('train --search-result trains the searched configuration and saves each of its adapters', async (t) => {
  const dir = tempDir(t)
  const best = join(dir, 'best.json')
  const config: SearchConfig = { groups: [{ layers: [0], method: 'lora', size: 2 }, { layers: [1], method: 'bottleneck', size: 2 }], prefixLength: 1, loraTargets: ['q_proj', 'v_proj'] }
  writeFileSync(best, JSON.stringify({ config, params: 0, valLoss: 0 }))
  const out = join(dir, 'out')
  const r = await run('train', '--model', MODEL_DIR, '--data', dataDir(t), '--search-result', best, '--steps', '3', '--batch-size', '2', '--learning-rate', '1e-2', '--output', out)
  t.is(r.code, 0, r.err)
  const fresh = await applySearchConfig(await LlamaModel.fromPretrained(MODEL_DIR), config, { seed: 0 })
  const names = fresh.activeAdapters
  t.true(names.length === 3, `one adapter per group and the prefix: ${names}`)
  const trained = new PeftModel(await LlamaModel.fromPretrained(MODEL_DIR))
  try {
    for (const n of names) await trained.loadAdapter(join(out, n), n)
    const initial = new Map(await Promise.all(fresh.namedParameters({ trainableOnly: true }).map(async ([n, p]) => [n, await p.data.toFloat32Array()] as const)))
    for (const n of names) {
      const own = trained.namedParameters().filter(([pn]) => pn.split('.').includes(n))
      t.true(own.length > 0, `${n} saved`)
      let moved = 0
      for (const [pn, p] of own) {
        const v = await p.data.toFloat32Array()
        const before = initial.get(pn)!
        t.true(v.every(Number.isFinite), pn)
        moved = Math.max(moved, ...v.map((x, i) => Math.abs(x - before[i])))
      }
      t.true(moved > 0, `${n} trained (max change ${moved})`)
    }
  } finally {
    fresh.dispose()
    trained.dispose()
  }
  const refused = await run('train', '--model', MODEL_DIR, '--data', dataDir(t), '--search-result', best, '--method', 'lora', '--output', out)
  t.regex(refused.err, /--search-result: the searched configuration sets the methods .*--method, --compose and method options do not apply/)
  const resumed = await run('train', '--model', MODEL_DIR, '--data', dataDir(t), '--search-result', best, '--resume', out, '--output', out)
  t.regex(resumed.err, /--search-result: cannot --resume yet/)
})
