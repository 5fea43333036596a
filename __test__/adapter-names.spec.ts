// Adapter names are identifiers, never paths: savePretrained writes adapter `x` to `dir/x`, so
// an absolute name ('/an/absolute/dir') wrote outside `dir`. Every method that takes a name
// checks it, and the error names the argument.
import test from 'ava'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, LoraConfig, PeftModel, getPeftModel } from '../src'
import { MODEL_DIR } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const lora = () => new LoraConfig({ r: 2, targetModules: ['q_proj'] })
const RULE = /expected an adapter name: 1 to 128 letters, digits, "_" or "-" \(a name, not a path\), found /

test('an absolute adapter name is refused and nothing is written outside the save folder', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), lora())
  const outside = join(tempDir(t), 'outside')
  const e = await t.throwsAsync(peft.addAdapter(outside, lora()))
  t.is(e!.message, `name: expected an adapter name: 1 to 128 letters, digits, "_" or "-" (a name, not a path), found ${JSON.stringify(outside)}`)
  const dir = tempDir(t)
  await peft.savePretrained(dir)
  t.false(existsSync(outside))
  t.deepEqual(readdirSync(dir).sort(), ['adapter_config.json', 'adapter_model.safetensors'])
  peft.dispose()
})

test('paths, separators, dots, empty, overlong and non-strings are refused everywhere a name goes in', async (t) => {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const peft = await getPeftModel(model, lora())
  const saved = tempDir(t)
  await peft.savePretrained(saved)
  for (const bad of ['/abs', 'a/b', 'a\\b', '..', '.', 'a.b', '', 'x'.repeat(129), 'C:x', 3 as never]) {
    const add = await t.throwsAsync(peft.addAdapter(bad, lora()))
    t.regex(add!.message, new RegExp(`^name: ${RULE.source}`), `addAdapter ${String(bad)}`)
    t.regex((await t.throwsAsync(peft.loadAdapter(saved, bad)))!.message, /^name: expected an adapter name/)
    t.regex(t.throws(() => peft.setAdapter(bad))!.message, /^name: expected an adapter name/)
    t.regex(t.throws(() => peft.setAdapter(['default', bad]))!.message, /^name\[1\]: expected an adapter name/)
    t.regex(t.throws(() => peft.deleteAdapter(bad))!.message, /^name: expected an adapter name/)
    t.regex(t.throws(() => peft.adapterConfig(bad))!.message, /^name: expected an adapter name/)
    t.regex(t.throws(() => peft.targetedModules(bad))!.message, /^name: expected an adapter name/)
    t.regex(t.throws(() => peft.setDyLoraRank(2, bad))!.message, /^adapterName: expected an adapter name/)
    t.regex(t.throws(() => peft.mergeAdapter([bad]))!.message, /^names\[0\]: expected an adapter name/)
    t.regex((await t.throwsAsync(peft.savePretrained(tempDir(t), { selectedAdapters: [bad] })))!.message, /^selectedAdapters\[0\]: expected an adapter name/)
    t.regex((await t.throwsAsync(peft.addWeightedAdapter(['default'], [1], bad)))!.message, /^name: expected an adapter name/)
    t.regex((await t.throwsAsync(peft.addWeightedAdapter([bad], [1], 'mix')))!.message, /^adapters\[0\]: expected an adapter name/)
    t.regex((await t.throwsAsync(peft.forward({ inputIds: [[1, 2]], adapterNames: [bad] })))!.message, /^adapterNames\[0\]: expected an adapter name/)
  }
  t.regex((await t.throwsAsync(getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), lora(), { adapterName: '/abs' })))!.message, /^adapterName: expected an adapter name/)
  t.regex((await t.throwsAsync(PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), saved, { adapterName: '../up' })))!.message, /^adapterName: expected an adapter name/)
  t.regex((await t.throwsAsync(peft.mergeAndUnload({ adapterNames: ['a/b'] })))!.message, /^adapterNames\[0\]: expected an adapter name/)
  peft.dispose()
})

test('"__base__" is not a name for a new adapter; it still picks the base model in a mixed batch', async (t) => {
  const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), lora())
  t.is((await t.throwsAsync(peft.addAdapter('__base__', lora())))!.message, 'name: "__base__" is reserved: in adapterNames it means "no adapter"')
  const { logits } = await peft.forward({ inputIds: [[1, 2], [1, 2]], adapterNames: ['default', '__base__'] })
  t.deepEqual(logits.shape, [2, 2, 384])
  await peft.addAdapter('fr-FR_2', lora())
  await peft.addAdapter('français', lora())
  t.deepEqual(peft.adapterNames.sort(), ['default', 'fr-FR_2', 'français'].sort(), 'letters, digits, "_" and "-", in any script')
  peft.dispose()
})
