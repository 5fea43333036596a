// The LLaMA family as transformers + PEFT compute it: Qwen2, Qwen3, Mistral, Phi-3 and Gemma 3
// against ../shared/fixtures/hf-peft-tiny-arch (every case of every architecture), through
// AutoModelForCausalLM and PeftModel.
import test from 'ava'
import { copyFileSync, readdirSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { AutoModelForCausalLM, LlamaModel } from '../src'
import { Fixture, checkAdapterCase, checkBase, checkFull } from './helpers/fixture-runner'
import { tempDir } from './helpers/temp'

const ROOT = join(__dirname, '..', '..', 'shared', 'fixtures', 'hf-peft-tiny-arch')
const ARCHS: Record<string, string> = { qwen2: 'qwen2', qwen3: 'qwen3', mistral: 'mistral', phi3: 'phi3', gemma3: 'gemma3_text' }

for (const [arch, modelType] of Object.entries(ARCHS)) {
  const fx = new Fixture(join(ROOT, arch))
  test(`${arch}: AutoModelForCausalLM picks ${modelType}; base logits, loss and greedy match transformers`, async (t) => {
    const m = await AutoModelForCausalLM.fromPretrained(fx.modelDir)
    t.is(m.config.modelType, modelType)
    t.is(m.config.model_type, modelType)
    m.dispose()
    await checkBase(t, fx)
  })

  test(`${arch}: both config spellings give the same logits`, async (t) => {
    const dir = tempDir(t, `peft-node-spelling-${arch}-`)
    for (const f of readdirSync(fx.modelDir).filter((f) => !f.startsWith('config'))) symlinkSync(join(fx.modelDir, f), join(dir, f))
    const spellings = readdirSync(fx.modelDir).filter((f) => f.startsWith('config') && f.endsWith('.json'))
    const ids = fx.inputs().input_ids
    const outs: Float32Array[] = []
    for (const s of spellings) {
      copyFileSync(join(fx.modelDir, s), join(dir, 'config.json'))
      const m = await AutoModelForCausalLM.fromPretrained(dir)
      outs.push(await (await m.forward({ inputIds: ids })).logits.toFloat32Array())
      m.dispose()
    }
    t.true(outs.length >= 1)
    for (const o of outs.slice(1)) t.deepEqual(o, outs[0])
  })

  test(`${arch}: full fine-tuning: every gradient, two AdamW steps and greedy match`, (t) => checkFull(t, fx))

  for (const name of readdirSync(join(ROOT, arch, 'cases')).filter((c) => c !== 'full')) {
    test(`${arch}: ${name} matches PEFT (files, logits, gradients, AdamW, greedy, merge)`, (t) => checkAdapterCase(t, fx, name))
  }
}

test('LlamaModel.fromPretrained still loads LLaMA, and names AutoModelForCausalLM for the others', async (t) => {
  const m = await LlamaModel.fromPretrained(join(ROOT, '..', 'hf-peft-tiny-llama', 'model'))
  t.is(m.config.modelType, 'llama')
  m.dispose()
  await t.throwsAsync(LlamaModel.fromPretrained(join(ROOT, 'qwen3', 'model')), { message: /qwen3.*AutoModelForCausalLM/ })
})

// Phi-4-mini's shape of Phi-3: partial rotary (factor 0.5) and LongRoPE (short factors up to
// original_max_position_embeddings 16, long ones past it, cos/sin × sqrt(1 + ln 16 / ln 16)).
// Made by make_fixtures.py (transformers 5.17) from __test__/data/fixtures/phi3-longrope/spec.json;
// the 24-token rows use the long factors, the 9-token prompt the short ones.
const longrope = new Fixture(join(__dirname, 'data', 'fixtures', 'phi3-longrope'), 17)
test('phi3 with partial rotary and LongRoPE: logits, loss and greedy (up to the switch) match transformers', (t) => checkBase(t, longrope))
test('phi3 with partial rotary and LongRoPE: full fine-tuning gradients and two AdamW steps match', (t) => checkFull(t, longrope))
