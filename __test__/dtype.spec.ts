// One dtype table (issue 15): every name and alias the core's table lists is accepted by every
// entry point (fromPretrained, savePretrained, planMemory, the CLI's --dtype of merge and plan),
// and one name outside it is refused by all of them, each listing the accepted spellings.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, planMemory, type DType } from '../src'
import { dtypeTable } from '../src/dtype'
import { typeBytes } from '../src/plan/formula'
import { main } from '../src/cli/main'
import { MODEL_DIR } from './helpers/fixtures'
import { capture } from './helpers/cli'
import { tempDir } from './helpers/temp'
import { tinyLora } from './helpers/train-data'

const spellings = () => dtypeTable().flatMap((d) => [d.name, ...d.aliases].map((s) => ({ s, d })))

test('the table has the four float dtypes, each with its aliases, storage name and size', (t) => {
  t.deepEqual(
    dtypeTable().map((d) => [d.name, d.storage, d.bytes]),
    [
      ['float32', 'F32', 4],
      ['float16', 'F16', 2],
      ['bfloat16', 'BF16', 2],
      ['float64', 'F64', 8],
    ],
  )
  t.true(spellings().some(({ s }) => s === 'bf16'))
})

test('every spelling loads, saves and plans as its dtype', async (t) => {
  const base = await LlamaModel.fromPretrained(MODEL_DIR)
  t.teardown(() => base.dispose())
  const dir = tempDir(t)
  for (const { s, d } of spellings()) {
    const model = await LlamaModel.fromPretrained(MODEL_DIR, { dtype: s as DType })
    const types = new Set(model.native.parameters().map((p) => p.dtype))
    model.dispose()
    t.deepEqual([...types], [d.name], `fromPretrained dtype ${s}`)

    await base.savePretrained(join(dir, s), { dtype: s as DType })
    t.is(JSON.parse(readFileSync(join(dir, s, 'config.json'), 'utf8')).torch_dtype, d.name, `savePretrained dtype ${s}`)

    // Norms stay float32 whatever the dtype: the weights scale with d.bytes, but not exactly.
    const weights = (dtype: string) => planMemory(MODEL_DIR, { batchSize: 1, seqLen: 8, dtype }).components.baseWeights
    t.is(weights(s), weights(d.name), `planMemory dtype ${s}`)
    t.is(Math.sign(weights(s) - weights('float32')), Math.sign(d.bytes - 4), `planMemory dtype ${s}`)
  }
})

test('the CLI takes every spelling in merge --dtype and plan --dtype', async (t) => {
  const dir = tempDir(t)
  const peft = await tinyLora()
  await peft.savePretrained(join(dir, 'adapter'))
  peft.dispose()
  for (const { s, d } of spellings()) {
    const out = join(dir, `merged-${s}`)
    const io = capture()
    t.is(await main(['merge', '--model', MODEL_DIR, '--adapter', join(dir, 'adapter'), '--output', out, '--dtype', s], io), 0, io.errors())
    t.is(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).torch_dtype, d.name, `merge --dtype ${s}`)
    const plan = capture()
    t.is(await main(['plan', MODEL_DIR, '--dtype', s], plan), 0, `plan --dtype ${s}: ${plan.errors()}`)
  }
})

test('a name outside the table is refused everywhere, listing the accepted spellings', async (t) => {
  const listed = /float32 \(f32, float\), float16 \(f16, half\), bfloat16 \(bf16\), float64 \(f64, double\)/
  const load = await t.throwsAsync(LlamaModel.fromPretrained(MODEL_DIR, { dtype: 'int8' as DType }))
  t.regex(load!.message, /`dtype`/)
  t.regex(load!.message, listed)
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  t.teardown(() => model.dispose())
  const save = await t.throwsAsync(model.savePretrained(tempDir(t), { dtype: 'int8' as DType }))
  t.regex(save!.message, listed)
  t.throws(() => planMemory(MODEL_DIR, { dtype: 'int8' }), { message: listed })
  const io = capture()
  t.is(await main(['plan', MODEL_DIR, '--dtype', 'int8'], io), 1)
  t.regex(io.errors(), listed)
})

test('the planner sizes float tensors by the table, by name, alias or storage name', (t) => {
  for (const { s, d } of spellings()) t.is(typeBytes(s, 10), 10 * d.bytes, s)
  for (const d of dtypeTable()) t.is(typeBytes(d.storage, 10), 10 * d.bytes, d.storage)
  t.is(typeBytes('Q4_0', 64), 36, 'block types keep their ggml sizes')
})
