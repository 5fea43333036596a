// `peft-node train --method adapter-fusion|mole --compose DIR1,DIR2` (issue 16): the papers'
// second stage by CLI. Two adapters are trained by CLI, composed, and the composition trained;
// only its own parameters (fusion Q, K, V; MoLE's gates) may move, and its folder loads back.
import test, { type ExecutionContext } from 'ava'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, PeftModel } from '../src'
import { main } from '../src/cli/main'
import { capture } from './helpers/cli'
import { cliTrain } from './helpers/cli-train'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const logits = async (peft: PeftModel) => (await peft.forward({ inputIds: inputs().input_ids })).logits.toFloat64Array()
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]))
  return m
}

/** The parameters of adapter `name`, keyed by their names with the adapter's name taken out. */
async function adapterParams(peft: PeftModel, name: string): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>()
  for (const [n, p] of peft.namedParameters()) {
    const parts = n.split('.')
    if (parts.includes(name)) out.set(parts.filter((s) => s !== name).join('.'), await p.data.toFloat32Array())
  }
  return out
}

/**
 * Composes `experts` in process as the CLI does (untrained), loads the CLI's trained `out`, and
 * checks: the parameters matching `own` changed, every other one (the copied experts) did not,
 * the logits moved, and the folder saves and loads back with identical logits.
 */
async function checkTrainedComposition(t: ExecutionContext, method: 'adapter-fusion' | 'mole', experts: string[], out: string, own: RegExp) {
  const peft = new PeftModel(await LlamaModel.fromPretrained(MODEL_DIR))
  try {
    for (const [i, dir] of experts.entries()) await peft.loadAdapter(dir, `e${i}`)
    await peft.addComposedAdapter(method, ['e0', 'e1'], 'fresh')
    await peft.loadAdapter(out, 'trained')
    const fresh = await adapterParams(peft, 'fresh')
    const trained = await adapterParams(peft, 'trained')
    t.deepEqual([...trained.keys()].sort(), [...fresh.keys()].sort())
    t.true([...fresh.keys()].some((n) => own.test(n)), `${method}: some parameter matches ${own}`)
    t.true([...fresh.keys()].some((n) => !own.test(n)), `${method}: the experts are in the composition`)
    for (const [n, v] of fresh) {
      const d = maxDiff(v, trained.get(n)!)
      if (own.test(n)) t.true(d > 0 && Number.isFinite(d), `${n} trained (max change ${d})`)
      else t.is(d, 0, `${n} stays as the trained expert`)
    }
    peft.setAdapter('fresh')
    const before = await logits(peft)
    peft.setAdapter('trained')
    const after = await logits(peft)
    t.true(maxDiff(before, after) > 0, 'training the composition changed the logits')
    const again = tempDir(t, 'peft-node-compose-')
    await peft.savePretrained(again, { selectedAdapters: ['trained'] })
    await peft.loadAdapter(join(again, 'trained'), 'reloaded')
    peft.setAdapter('reloaded')
    t.is(maxDiff(await logits(peft), after), 0)
  } finally {
    peft.dispose()
  }
}

function losses(metrics: string): number[] {
  return metrics.trim().split('\n').map((l) => JSON.parse(l) as { type: string; loss: number }).filter((m) => m.type === 'train').map((m) => m.loss)
}

test('train --method adapter-fusion --compose: fusion over two CLI-trained bottleneck adapters', async (t) => {
  const a = await cliTrain(t, 'bottleneck', ['--seed', '1'])
  const b = await cliTrain(t, 'bottleneck', ['--seed', '2'])
  const fusion = await cliTrain(t, 'adapter-fusion', ['--compose', `${a.out},${b.out}`, '--steps', '3'])
  t.is(fusion.config.peft_type, 'ADAPTER_FUSION')
  const l = losses(fusion.metrics)
  t.is(l.length, 3)
  t.true(l.every(Number.isFinite), `losses ${l}`)
  await checkTrainedComposition(t, 'adapter-fusion', [a.out, b.out], fusion.out, /fusion_(query|key|value)/)
})

test('train --method mole --compose: gates over two CLI-trained LoRAs, from a config file', async (t) => {
  const a = await cliTrain(t, 'lora', ['--r', '4', '--seed', '1'])
  const b = await cliTrain(t, 'lora', ['--r', '4', '--seed', '2'])
  const config = join(tempDir(t, 'peft-node-compose-'), 'mole.yaml')
  writeFileSync(config, `compose:\n  - ${a.out}\n  - ${b.out}\n`)
  const mole = await cliTrain(t, 'mole', ['-c', config, '--steps', '3'])
  t.is(mole.config.peft_type, 'MOLE')
  const l = losses(mole.metrics)
  t.is(l.length, 3)
  t.true(l.every(Number.isFinite), `losses ${l}`)
  await checkTrainedComposition(t, 'mole', [a.out, b.out], mole.out, /mole_gate/)
})

test('train --compose refuses another method, one adapter, method options and adapters of the wrong kind', async (t) => {
  const lora = await cliTrain(t, 'lora', ['--r', '4'])
  const refused = async (args: string[], message: RegExp) => {
    const io = capture()
    const code = await main(['train', '--model', MODEL_DIR, '--data', join(lora.out, 'none.jsonl'), '--output', tempDir(t, 'peft-node-compose-'), ...args], io)
    t.is(code, 1)
    t.regex(io.errors(), message)
  }
  await refused(['--method', 'lora', '--compose', `${lora.out},${lora.out}`], /--compose: .*adapter-fusion or --method mole, not --method lora/)
  await refused(['--method', 'mole', '--compose', lora.out], /--compose: expected at least 2 trained adapter folders, .*found 1/)
  await refused(['--method', 'mole', '--compose', `${lora.out},${lora.out}`, '--r', '4'], /--compose: .*method options do not apply \(found --r\)/)
  // The kind is checked as each folder loads, before the data is read.
  await refused(['--method', 'adapter-fusion', '--compose', `${lora.out},${lora.out}`], new RegExp(`--compose ${lora.out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: adapter-fusion composes a serial bottleneck adapter .*found an adapter of peft_type "LORA"`))
})
