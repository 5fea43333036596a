// Reads the shared HF fixtures in place (../shared/fixtures, never copied).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

export const FIXTURES = join(__dirname, '..', '..', '..', 'shared', 'fixtures', 'hf-peft-tiny-llama')
export const MODEL_DIR = join(FIXTURES, 'model')

export interface Inputs {
  input_ids: number[][]
  attention_mask: number[][]
  labels: number[][]
  prompt_len: number
  new_tokens: number
  pad_id: number
  texts: string[]
}

export function inputs(): Inputs {
  return JSON.parse(readFileSync(join(FIXTURES, 'inputs.json'), 'utf8')) as Inputs
}

export interface FixtureTensor {
  shape: number[]
  data: Float64Array
}

/** A minimal safetensors reader (F32 and I64) for test oracles. */
export function readSafetensors(path: string): Map<string, FixtureTensor> {
  const buf = readFileSync(path)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>
  const base = 8 + n
  const out = new Map<string, FixtureTensor>()
  for (const [name, h] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const [s, e] = h.data_offsets
    const bytes = buf.subarray(base + s, base + e)
    const count = h.shape.reduce((a, b) => a * b, 1)
    const data = new Float64Array(count)
    for (let i = 0; i < count; i++) {
      if (h.dtype === 'F32') data[i] = bytes.readFloatLE(i * 4)
      else if (h.dtype === 'I64') data[i] = Number(bytes.readBigInt64LE(i * 8))
      else throw new Error(`unsupported dtype ${h.dtype} for ${name}`)
    }
    out.set(name, { shape: h.shape, data })
  }
  return out
}

export function expected(kase: string): Map<string, FixtureTensor> {
  const p = kase === 'base' ? join(FIXTURES, 'base', 'expected.safetensors') : join(FIXTURES, 'cases', kase, 'expected.safetensors')
  return readSafetensors(p)
}

/** max |a - b| over positions where mask is 1; a and b are [b, t, v] flattened. */
export function maxMaskedDiff(a: ArrayLike<number>, b: ArrayLike<number>, mask: number[][], vocab: number): number {
  let m = 0
  const t = mask[0].length
  mask.forEach((row, r) =>
    row.forEach((on, c) => {
      if (!on) return
      const off = (r * t + c) * vocab
      for (let k = 0; k < vocab; k++) m = Math.max(m, Math.abs(a[off + k] - b[off + k]))
    }),
  )
  return m
}

/** max |a - b| / max |b| */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let scale = 1e-12
  let m = 0
  for (let i = 0; i < b.length; i++) {
    scale = Math.max(scale, Math.abs(b[i]))
    m = Math.max(m, Math.abs(a[i] - b[i]))
  }
  return m / scale
}
