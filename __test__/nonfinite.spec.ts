// An adapter file holding NaN or infinite weights loads with a warning naming the tensor.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel, PeftModel, PeftWarning } from '../src'
import { MODEL_DIR } from './helpers/fixtures'
import { tempDir } from './helpers/temp'
import { tinyLora } from './helpers/train-data'

/** Writes NaN and +Inf into the first two values of tensor `key` (float32) of a safetensors file. */
function poison(file: string, key: string): void {
  const buf = readFileSync(file)
  const headerLen = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'))
  const start = 8 + headerLen + header[key].data_offsets[0]
  buf.writeFloatLE(Number.NaN, start)
  buf.writeFloatLE(Number.POSITIVE_INFINITY, start + 4)
  writeFileSync(file, buf)
}

test('loading an adapter with NaN/Inf weights warns, naming the file and the tensor', async (t) => {
  const dir = tempDir(t)
  const peft = await tinyLora()
  await peft.savePretrained(dir)
  peft.dispose()
  const key = 'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight'
  poison(join(dir, 'adapter_model.safetensors'), key)

  const warnings: PeftWarning[] = []
  const listen = (w: Error) => w instanceof PeftWarning && warnings.push(w)
  process.on('warning', listen)
  t.teardown(() => process.off('warning', listen))
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  const loaded = await PeftModel.fromPretrained(model, dir)
  t.teardown(() => loaded.dispose())
  const found = loaded.warnings.filter((w) => w.includes(key))
  t.is(found.length, 1, loaded.warnings.join('\n'))
  t.regex(found[0], /adapter_model\.safetensors: `[^`]+` holds 1 NaN and 1 infinite value\(s\)/)
  // Structured: code non_finite, the tensor as its field, in warningDetails and process warnings.
  t.deepEqual(
    loaded.warningDetails.filter((w) => w.code === 'non_finite').map((w) => w.field),
    [key],
  )
  await new Promise((r) => setImmediate(r))
  t.true(warnings.some((w) => w.code === 'non_finite' && w.field === key && w.message.includes(key)))

  // The CLI prints it as a plain warning line naming the tensor.
  const bin = join(__dirname, '..', 'dist', 'cli', 'main.js')
  const r = spawnSync(process.execPath, [bin, 'info', '--model', MODEL_DIR, '--adapter', dir], { encoding: 'utf8' })
  t.is(r.status, 0, r.stderr)
  t.true(r.stderr.split('\n').some((l) => l.startsWith('warning: ') && l.includes(`\`${key}\` holds 1 NaN`)), r.stderr)
})
