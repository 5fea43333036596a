// The survey methods' training procedures through the Trainer (issue 16): MixLoRA's balance
// loss is part of a training forward's loss and is reported in the step metrics; SoRA's proximal
// step runs after each optimizer step and prunes gates; every new CLI name builds its method.
import test from 'ava'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, MixLoraConfig, SoraConfig, Trainer, getPeftModel, loadData } from '../src'
import { METHODS, methodConfig } from '../src/cli/methods'
import { main } from '../src/cli/main'
import { capture } from './helpers/cli'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { completions, texts, writeJsonl } from './helpers/train-data'
import { tempDir } from './helpers/temp'

const batch = () => ({ inputIds: inputs().input_ids, attentionMask: inputs().attention_mask, labels: inputs().labels })

test('MixLoRA: a training loss = the evaluation loss + the balance loss, which the Trainer logs', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new MixLoraConfig({ r: 2, numExperts: 4, topK: 2, routerAuxLossCoef: 0.5 }), { seed: 2 })
  const evalLoss = await (await peft.forward(batch())).loss!.item()
  t.deepEqual(peft.auxLosses(), {}, 'no balance loss outside training')
  peft.train()
  const trainLoss = await (await peft.forward(batch())).loss!.item()
  const balance = peft.auxLosses().mixlora_balance
  // α·E·Σ fᵢPᵢ with Σfᵢ = k: between α·k·(min Pᵢ)·E and α·k·(max Pᵢ)·E, so near α·k when balanced.
  t.true(balance > 0 && balance < 0.5 * 2 * 4, `balance ${balance}`)
  t.true(Math.abs(trainLoss - evalLoss - balance) < 1e-5, `train ${trainLoss} = eval ${evalLoss} + balance ${balance}`)

  const out = tempDir(t, 'peft-node-mixlora-')
  const data = await loadData(texts(8), peft.tokenizer)
  const steps: number[] = []
  const trainer = new Trainer(peft, { train: data.train, output: out, maxSteps: 3, batchSize: 2, learningRate: 1e-2 })
  trainer.on('step', (s) => steps.push(s.auxLosses?.mixlora_balance ?? NaN))
  await trainer.train()
  t.is(steps.length, 3)
  t.true(steps.every((b) => Number.isFinite(b) && b > 0), `balance per step ${steps}`)
  const logged = readFileSync(join(out, 'metrics.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((r) => r.type === 'train')
  t.deepEqual(logged.map((r) => r.auxLosses.mixlora_balance), steps)
  peft.dispose()
})

test('SoRA: the Trainer soft-thresholds the gates after each step and reports the kept rank', async (t) => {
  // λ·lr = 0.2 per step: the gates (init 1) reach zero within a few steps unless their gradient holds them.
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new SoraConfig({ r: 4, sparseLambda: 20, targetModules: ['q_proj'] }), { seed: 1 })
  const data = await loadData(texts(8), peft.tokenizer)
  const ranks: number[] = []
  const trainer = new Trainer(peft, { train: data.train, maxSteps: 8, batchSize: 2, learningRate: 1e-2, lrSchedule: 'constant' })
  trainer.on('step', (s) => ranks.push(s.soraRanks?.default ?? NaN))
  await trainer.train()
  t.is(ranks.length, 8)
  t.is(ranks[0], 8, 'two layers × rank 4, all gates alive after one step')
  t.true(ranks[7] < 8, `gates pruned: ${ranks}`)
  let zeros = 0
  for (const [name, p] of peft.namedParameters()) if (name.includes('sora_gate')) zeros += (await p.data.toFloat64Array()).filter((g) => g === 0).length
  t.is(zeros, 8 - ranks[7], 'the reported rank counts the non-zero gates')
  t.throws(() => peft.soraProximalStep(Number.NaN), { message: /lr: expected a finite number/ })
  peft.dispose()
})

test('every new CLI method name builds a config the native core accepts', async (t) => {
  const names = ['moslora', 'molora', 'mov', 'mixlora', 'lora-dropout', 'sora', 'child-tuning', 'compacter', 'pafi', 'dept']
  for (const name of names) {
    t.truthy(METHODS[name], name)
    const config = methodConfig(name, name === 'compacter' ? { bottleneckSize: 8 } : {})
    const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), config, { seed: 0 })
    t.is(peft.peftConfig.default.peft_type, METHODS[name].peftType, name)
    t.true(peft.namedParameters({ trainableOnly: true }).length > 0, name)
    peft.dispose()
  }
  t.is(methodConfig('pafi', {}).toJSON().mask_type, 'smallest_magnitude')
})

test('the CLI trains MixLoRA and SoRA by name, with their per-step procedures', async (t) => {
  const data = join(tempDir(t, 'peft-node-cli-'), 'data')
  mkdirSync(data)
  writeJsonl(join(data, 'train.jsonl'), completions(8))
  for (const [method, peftType, extra] of [['mixlora', 'MIXLORA', ['--num-experts', '3', '--r', '2']], ['sora', 'SORA', ['--r', '4', '--sparse-lambda', '1']]] as const) {
    const out = join(tempDir(t, 'peft-node-cli-'), method)
    const io = capture()
    const code = await main(['train', '--model', MODEL_DIR, '--batch-size', '2', '--learning-rate', '1e-2', '--data', data, '--steps', '2', '--output', out, '--method', method, ...extra], io)
    t.is(code, 0, `${method}: ${io.errors()}`)
    const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'))
    t.is(cfg.peft_type, peftType)
    t.true(existsSync(join(out, 'adapter_model.safetensors')))
    const metrics = readFileSync(join(out, 'metrics.jsonl'), 'utf8')
    t.regex(metrics, method === 'mixlora' ? /"auxLosses":\{"mixlora_balance":[0-9.e-]+\}/ : /"soraRanks":\{"default":\d+\}/, method)
  }
})
