// Structured warnings (issue 15): the core says what kind of warning (`code`) and which config
// key or tensor (`field`); TS and the CLI act on those instead of parsing the sentence.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, PeftModel, PeftWarning, RawPeftConfig, getPeftModel } from '../src'
import { MODEL_DIR } from './helpers/fixtures'
import { tempDir } from './helpers/temp'
import { tinyLora } from './helpers/train-data'

const BIN = join(__dirname, '..', 'dist', 'cli', 'main.js')

/** Collects the process warnings emitted while `t` runs. */
function listen(t: { teardown(f: () => void): void }): PeftWarning[] {
  const seen: PeftWarning[] = []
  const on = (w: Error) => {
    if (w instanceof PeftWarning) seen.push(w)
  }
  process.on('warning', on)
  t.teardown(() => process.off('warning', on))
  return seen
}

const tick = () => new Promise((r) => setImmediate(r))

test('unknown and ignored config fields come with their code and field, in peft.warningDetails and as process warnings', async (t) => {
  const seen = listen(t)
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const config = new RawPeftConfig({ peft_type: 'LORA', r: 2, target_modules: ['q_proj'], frobnicate: 1, runtime_config: {} })
  const peft = await getPeftModel(model, config)
  t.teardown(() => peft.dispose())
  const unknown = peft.warningDetails.find((w) => w.code === 'unknown_field')
  t.is(unknown?.field, 'frobnicate')
  t.is(unknown?.message, 'unknown LoraConfig field `frobnicate` (kept and written back, not used)')
  t.true(unknown instanceof PeftWarning && unknown.name === 'PeftWarning')
  const ignored = peft.warningDetails.find((w) => w.code === 'ignored_field')
  t.is(ignored?.field, 'runtime_config')
  // The string form users had stays: the messages, in order.
  t.deepEqual(
    peft.warnings,
    peft.warningDetails.map((w) => w.message),
  )
  await tick()
  t.true(seen.some((w) => w.code === 'unknown_field' && w.field === 'frobnicate'))

  // The methods on the shared reader (fields.rs) say the same, naming their config class.
  const ia3 = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new RawPeftConfig({ peft_type: 'IA3', shiny: true }), { warn: false })
  t.teardown(() => ia3.dispose())
  t.like(
    ia3.warningDetails.find((w) => w.code === 'unknown_field'),
    { field: 'shiny', message: 'unknown IA3Config field `shiny` (kept and written back, not used)' },
  )
})

test('an adapter tensor with NaN/Inf warns with code non_finite and the tensor as its field', async (t) => {
  const dir = tempDir(t)
  const peft = await tinyLora()
  await peft.savePretrained(dir)
  peft.dispose()
  const key = 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
  const file = join(dir, 'adapter_model.safetensors')
  const buf = readFileSync(file)
  const headerLen = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'))
  buf.writeFloatLE(Number.NaN, 8 + headerLen + header[key].data_offsets[0])
  writeFileSync(file, buf)

  const seen = listen(t)
  const loaded = await PeftModel.fromPretrained(await LlamaModel.fromPretrained(MODEL_DIR), dir)
  t.teardown(() => loaded.dispose())
  const w = loaded.warningDetails.filter((x) => x.code === 'non_finite')
  t.deepEqual(
    w.map((x) => x.field),
    [key],
  )
  await tick()
  t.true(seen.some((x) => x.code === 'non_finite' && x.field === key))

  // The CLI prints it as a plain warning line naming the tensor.
  const r = spawnSync(process.execPath, [BIN, 'info', '--model', MODEL_DIR, '--adapter', dir], { encoding: 'utf8' })
  t.is(r.status, 0, r.stderr)
  t.regex(r.stderr, new RegExp(`^warning: .*\`${key.replace(/\./g, '\\.')}\` holds 1 NaN`, 'm'))
})

test('capping maxNewTokens at the context length is a context_length warning on maxNewTokens', async (t) => {
  const seen = listen(t)
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  t.teardown(() => model.dispose())
  const context = model.config.max_position_embeddings as number
  await model.generate([1, 2, 3], { maxNewTokens: context, stopTokenIds: [] })
  await tick()
  const w = seen.find((x) => x.code === 'context_length')
  t.is(w?.field, 'maxNewTokens')
  t.regex(w?.message ?? '', /generating at most \d+ new tokens/)
})

test('the CLI refuses a method flag by the unknown_field warning it became, not by the wording', (t) => {
  const dir = tempDir(t)
  // A --method-config file's unknown field is kept with a warning; a flag with a field name the
  // method lacks is a typo, refused, and not also warned about.
  writeFileSync(join(dir, 'method.json'), JSON.stringify({ frobnicate: 1 }))
  const r = spawnSync(process.execPath, [BIN, 'info', '--model', MODEL_DIR, '--method-config', join(dir, 'method.json'), '--lora-alphaa', '3'], { encoding: 'utf8' })
  t.is(r.status, 1)
  t.regex(r.stderr, /--lora-alphaa: not an option of `info`, and LORA has no such field/)
  t.notRegex(r.stderr, /warning: unknown LoraConfig field `lora_alphaa`/)
})
