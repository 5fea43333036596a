// The LoRA improvements of the survey's tree, part B (issue 16), through the Trainer and the CLI:
// PeriodicLoRA unloads each stage and restarts LoRA with fresh optimizer state; Intrinsic SAID
// trains one shared vector and a scale per weight.
import test from 'ava'
import { AdamW, IntrinsicSaidConfig, LlamaModel, PeriodicLoraConfig, Trainer, getPeftModel, loadData, type StepInfo } from '../src'
import { METHODS } from '../src/cli/methods'
import { cliTrain } from './helpers/cli-train'
import { MODEL_DIR } from './helpers/fixtures'
import { texts } from './helpers/train-data'

const tensorOf = async (peft: { namedParameters(): [string, { data: { toFloat64Array(): Promise<Float64Array> } }][] }, part: string) =>
  Promise.all(peft.namedParameters().filter(([n]) => n.includes(part)).map(([, p]) => p.data.toFloat64Array()))

test('PeriodicLoRA: the Trainer unloads each stage into the merged weight and restarts LoRA', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new PeriodicLoraConfig({ r: 2, mergeEvery: 2, targetModules: ['q_proj'] }), { seed: 1 })
  const data = await loadData(texts(8), peft.tokenizer)
  const infos: StepInfo[] = []
  let opt: AdamW | undefined
  const trainer = new Trainer(peft, { train: data.train, maxSteps: 4, batchSize: 2, learningRate: 1e-2, optimizer: (ps) => (opt = new AdamW(ps, { lr: 1e-2, weightDecay: 0 })) })
  trainer.on('step', (s) => infos.push(s))
  await trainer.train()
  t.deepEqual(infos.map((s) => s.periodicStages?.default), [undefined, 1, undefined, 2])
  t.true((await tensorOf(peft, 'lora_merged')).every((m) => m.some((x) => x !== 0)), 'the stages are in the merged weights')
  t.true((await tensorOf(peft, 'lora_B')).every((b) => b.every((x) => x === 0)), 'B restarted at the last step')
  const state = await opt!.stateDict()
  t.is(Object.keys(state.state).length, 0, 'the restarted factors start with fresh optimizer state')
  t.throws(() => peft.periodicLoraRestart(-1), { message: /stepsDone/ })
  peft.dispose()
})

test('the CLI trains PeriodicLoRA by name', async (t) => {
  t.is(METHODS['periodic-lora'].peftType, 'PERIODIC_LORA')
  const { metrics } = await cliTrain(t, 'periodic-lora', ['--merge-every', '1'])
  t.regex(metrics, /"periodicStages":\{"default":2\}/)
})

test('Intrinsic SAID: one shared θ of intrinsicDim and a λ per weight train; the CLI trains it by name', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new IntrinsicSaidConfig({ intrinsicDim: 40 }), { seed: 1 })
  const shapes = peft.namedParameters({ trainableOnly: true }).map(([n, p]) => [n.replace(/.*layers\.(\d)\.self_attn\./, '$1.'), p.shape])
  t.deepEqual(shapes, [['base_model.said_theta.default', [40]], ['0.q_proj.said_lambda.default.weight', [1]], ['0.v_proj.said_lambda.default.weight', [1]], ['1.q_proj.said_lambda.default.weight', [1]], ['1.v_proj.said_lambda.default.weight', [1]]])
  peft.dispose()
  const { config } = await cliTrain(t, 'intrinsic-said', ['--intrinsic-dim', '30'])
  t.is(config.intrinsic_dim, 30)
})
