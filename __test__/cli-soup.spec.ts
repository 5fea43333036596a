// `peft-node adapter-soup`: AdapterSoup by CLI name builds from trained adapter folders and
// domain samples the soup `adapterSoup(peft, …)` builds, written as a normal adapter folder.
import test from 'ava'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, LoraConfig, PeftModel, adapterSoup, getPeftModel, loadData } from '../src'
import { main } from '../src/cli/main'
import { capture } from './helpers/cli'
import { MODEL_DIR, inputs } from './helpers/fixtures'
import { completions, writeJsonl } from './helpers/train-data'
import { tempDir } from './helpers/temp'

const logits = async (peft: PeftModel) => (await peft.forward({ inputIds: inputs().input_ids })).logits.toFloat64Array()

test('adapter-soup averages the closest adapter folders into an adapter folder, as adapterSoup does', async (t) => {
  const root = tempDir(t, 'peft-node-soup-')
  const dirs = [1, 2, 3].map((seed) => join(root, `lora${seed}`))
  for (const [i, dir] of dirs.entries()) {
    const peft = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new LoraConfig({ r: 2, initLoraWeights: false }), { seed: i + 1 })
    await peft.savePretrained(dir)
    peft.dispose()
  }
  const data = join(root, 'domain.jsonl')
  writeJsonl(data, completions(4))
  const out = join(root, 'soup')
  const io = capture()
  const code = await main(['adapter-soup', '--model', MODEL_DIR, '--adapters', dirs.join(','), '--data', data, '--output', out, '--top-k', '2'], io)
  t.is(code, 0, io.errors())
  t.true(existsSync(join(out, 'adapter_config.json')) && existsSync(join(out, 'adapter_model.safetensors')))
  t.regex(io.text(), /soup of lora\d, lora\d: loss [0-9.]+ on 4 samples/)
  t.is(io.text().match(/\(in the soup\)/g)?.length, 2)

  // The same soup through the TS API.
  const api = new PeftModel(await LlamaModel.fromPretrained(MODEL_DIR))
  for (const [i, dir] of dirs.entries()) await api.loadAdapter(dir, `s${i}`)
  const examples = (await loadData(data, api.tokenizer)).train.examples
  await adapterSoup(api, { adapters: ['s0', 's1', 's2'], examples, topK: 2, padTokenId: api.tokenizer?.padToken?.id ?? 0 })
  const cli = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), out)
  const [a, b] = [await logits(api), await logits(cli)]
  t.is(a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0), 0)
  api.dispose()
  cli.dispose()

  const refused = async (args: string[], message: RegExp) => {
    const e = capture()
    t.is(await main(['adapter-soup', '--model', MODEL_DIR, '--data', data, ...args], e), 1)
    t.regex(e.errors(), message)
  }
  await refused(['--adapters', dirs[0], '--output', join(root, 'x')], /--adapters: expected at least 2 adapter folders/)
  await refused(['--adapters', dirs.join(','), '--output', out], /--output .*already exists/)
  await refused(['--adapters', dirs.join(','), '--output', join(root, 'y'), '--top-k', '4'], /topK: expected an integer in \[1, 3\]/)
  await refused(['--adapters', dirs.join(','), '--output', join(root, 'z'), '--topk', '2'], /--topk/)
})
