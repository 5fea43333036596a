// DyLoRA from TypeScript: the inference rank can be changed after training (and is saved),
// training-mode forwards sample a rank reproducibly per seed, bad input is refused.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AdamW, DyLoraConfig, LlamaModel, LoraConfig, PeftModel, getPeftModel } from '../src'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const batch = () => ({ inputIds: inputs().input_ids, attentionMask: inputs().attention_mask, labels: inputs().labels })

async function trained(): Promise<PeftModel> {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new DyLoraConfig({ r: 4, rMin: 2, targetModules: ['q_proj', 'v_proj'] }), { seed: 1 })
  peft.train()
  const opt = new AdamW(peft.parameters({ trainableOnly: true }), { lr: 1e-2, weightDecay: 0 })
  for (let step = 0; step < 5; step++) {
    opt.zeroGrad()
    const { loss } = await peft.forward({ ...batch(), dropoutSeed: step })
    await loss!.backward()
    await opt.step()
  }
  opt.zeroGrad()
  peft.eval()
  return peft
}

const lossOf = async (peft: PeftModel, seed?: number) => (await peft.forward({ ...batch(), dropoutSeed: seed })).loss!.item()

test('setDyLoraRank changes the inference rank, and saving keeps it', async (t) => {
  const peft = await trained()
  const atR = await lossOf(peft)
  peft.setDyLoraRank(2)
  const at2 = await lossOf(peft)
  t.not(at2, atR, 'rank 2 and rank 4 give different outputs')
  const dir = tempDir(t, 'peft-node-dylora-')
  await peft.savePretrained(dir)
  t.is(JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')).eval_rank, 2)
  const back = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), dir)
  t.is(await lossOf(back), at2)
  back.setDyLoraRank(4)
  t.is(await lossOf(back), atR)
  for (const bad of [1, 5, 2.5]) t.throws(() => peft.setDyLoraRank(bad), { message: /rank/ })
  peft.mergeAdapter()
  t.throws(() => peft.setDyLoraRank(3), { message: /unmerge/ })
  back.dispose()
  peft.dispose()
})

test('training-mode forwards sample one rank per seed, reproducibly', async (t) => {
  const peft = await trained()
  peft.train()
  const losses = new Set<number>()
  for (let seed = 0; seed < 12; seed++) {
    const l = await lossOf(peft, seed)
    t.is(await lossOf(peft, seed), l, `seed ${seed} reproducible`)
    losses.add(l)
  }
  t.is(losses.size, 3, 'the ranks 2, 3 and 4 each give their own loss')
  peft.dispose()
})

test('bad DyLoRA options and non-DyLoRA adapters are refused', async (t) => {
  t.throws(() => new DyLoraConfig({ r: 4, rMin: 5 }), { message: /rMin/ })
  t.throws(() => new DyLoraConfig({ r: 4, evalRank: 5 }), { message: /evalRank/ })
  t.throws(() => new DyLoraConfig({ r: 0 }), { message: /\br\b/ })
  t.throws(() => new DyLoraConfig({ updateMode: 'some' as 'all' }), { message: /updateMode/ })
  const lora = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new LoraConfig({ r: 4 }))
  t.throws(() => lora.setDyLoraRank(2), { message: /DyLoRA/ })
  lora.dispose()
})
