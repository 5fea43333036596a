// Structured warnings (issue 15): the core says what kind of warning (`code`) and which config
// key or tensor (`field`); TS and the CLI act on those instead of parsing the sentence.
// (The non_finite warning of an adapter tensor: nonfinite.spec.ts.)
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, PeftWarning, RawPeftConfig, getPeftModel } from '../src'
import { MODEL_DIR } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

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

test("the model checks' warnings (TunerConfig::check_model) come with their code and field", async (t) => {
  // bias "all" on modules without a bias trains nothing: an ignored field.
  const lora = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new RawPeftConfig({ peft_type: 'LORA', r: 2, target_modules: ['q_proj'], bias: 'all' }), { warn: false })
  t.teardown(() => lora.dispose())
  t.like(lora.warningDetails.find((w) => w.field === 'bias'), { code: 'ignored_field', message: 'LoraConfig bias "all" trains nothing: no targeted module has a bias (other modules\' biases are not trained)' })
  const vera = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new RawPeftConfig({ peft_type: 'VERA', r: 2, target_modules: ['q_proj'], bias: 'vera_only' }), { warn: false })
  t.teardown(() => vera.dispose())
  const veraBias = vera.warningDetails.find((w) => w.field === 'bias')
  t.is(veraBias?.code, 'ignored_field')
  t.regex(veraBias?.message ?? '', /^VeraConfig bias "vera_only" trains nothing/)

  // Prefix tuning on the fixture (4 query heads, 2 key/value heads of 16): token_dim and
  // num_attention_heads given as the query side's are replaced by the key/value side's, as PEFT does.
  const seen = listen(t)
  const prefix = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new RawPeftConfig({ peft_type: 'PREFIX_TUNING', num_virtual_tokens: 2, token_dim: 64, num_attention_heads: 4 }))
  t.teardown(() => prefix.dispose())
  const adjusted = prefix.warningDetails.filter((w) => w.code === 'adjusted')
  t.deepEqual(adjusted.map((w) => w.field), ['token_dim', 'num_attention_heads'])
  t.is(adjusted[0].message, "`token_dim` 64 replaced by 32: prefix tuning's keys and values have the model's 2 key/value heads")
  t.like(prefix.peftConfig.default, { token_dim: 32, num_attention_heads: 2 })
  await tick()
  t.true(seen.some((w) => w.code === 'adjusted' && w.field === 'token_dim'), 'emitted as a process warning too')

  // What the model fills in on its own (null sizes, a PEFT file's values) is not warned about.
  const plain = await getPeftModel(await LlamaModel.fromPretrained(MODEL_DIR), new RawPeftConfig({ peft_type: 'PREFIX_TUNING', num_virtual_tokens: 2 }), { warn: false })
  t.teardown(() => plain.dispose())
  t.deepEqual(plain.warningDetails, [])
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

test('the CLI prints a model check warning as its sentence, once', (t) => {
  const r = spawnSync(process.execPath, [BIN, 'info', '--model', MODEL_DIR, '--method', 'lora', '--bias', 'all'], { encoding: 'utf8' })
  t.is(r.status, 0, r.stderr)
  const lines = r.stderr.split('\n').filter((l) => l.includes('trains nothing'))
  t.deepEqual(lines, ['warning: LoraConfig bias "all" trains nothing: no targeted module has a bias (other modules\' biases are not trained)'])
})
