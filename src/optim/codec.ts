// Optimizer state tensors in a state dict. Chosen format: `{ shape, dtype: 'float32', data }`
// with `data` the little-endian float32 bytes in base64 — exact (no decimal round trip),
// 4/3 bytes per byte instead of ~20 characters per number, and plain JSON. `data` may also be
// a `number[]` on load, for hand-written or torch-converted dicts.
import { native, type NativeTensor } from '../native'
import { describe } from './validate'

export interface SerializedTensor {
  shape: number[]
  dtype: 'float32'
  /** base64 of the float32 values in little-endian byte order (or a number[] on load) */
  data: string
}

/** A state tensor's values as they are (checkpoints write them as safetensors, not base64 JSON). */
export async function rawTensor(t: NativeTensor): Promise<{ shape: number[]; dtype: 'float32'; data: Float32Array }> {
  return { shape: (t.shape as number[]).slice(), dtype: 'float32', data: (await t.toFloat32Array()) as Float32Array }
}

/** Every supported target (x64, arm64) is little-endian, so the host bytes are the format. */
export async function encodeTensor(t: NativeTensor): Promise<SerializedTensor> {
  const values = (await t.toFloat32Array()) as Float32Array
  const data = Buffer.from(values.buffer, values.byteOffset, values.byteLength).toString('base64')
  return { shape: (t.shape as number[]).slice(), dtype: 'float32', data }
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i])
}

/** Checks a serialized tensor against the parameter's shape, then makes a native tensor of it. */
export function decodeTensor(where: string, raw: unknown, shape: readonly number[]): NativeTensor {
  if (typeof raw !== 'object' || raw === null) throw new Error(`${where}: expected a serialized tensor { shape, dtype, data }, found ${describe(raw)}`)
  const r = raw as Partial<Record<keyof SerializedTensor, unknown>>
  if (!Array.isArray(r.shape) || !sameShape(r.shape, shape)) {
    throw new Error(`${where}: expected shape [${shape.join(', ')}] (the parameter's), found ${describe(r.shape)}`)
  }
  if (r.dtype !== undefined && r.dtype !== 'float32') throw new Error(`${where}.dtype: expected "float32", found ${describe(r.dtype)}`)
  const numel = shape.reduce((a, b) => a * b, 1)
  let values: Float32Array
  if (r.data instanceof Float32Array) {
    if (r.data.length !== numel) throw new Error(`${where}.data: expected ${numel} float32 values, found ${r.data.length}`)
    values = r.data
  } else if (typeof r.data === 'string') {
    const bytes = Buffer.from(r.data, 'base64')
    if (bytes.byteLength !== numel * 4) throw new Error(`${where}.data: expected ${numel} float32 values (${numel * 4} bytes), found ${bytes.byteLength} bytes`)
    values = new Float32Array(numel)
    new Uint8Array(values.buffer).set(bytes)
  } else if (Array.isArray(r.data)) {
    if (r.data.length !== numel) throw new Error(`${where}.data: expected ${numel} values, found ${r.data.length}`)
    if (!r.data.every((x) => typeof x === 'number')) throw new Error(`${where}.data: expected numbers only`)
    values = Float32Array.from(r.data as number[])
  } else {
    throw new Error(`${where}.data: expected a base64 string or a number[], found ${describe(r.data)}`)
  }
  return native.tensorFromF32(values, shape.slice()) as NativeTensor
}

// Group keys are camelCase in TS and snake_case in the state dict, as torch writes them.
const SNAKE: Record<string, string> = { weightDecay: 'weight_decay', initialLr: 'initial_lr' }
const CAMEL: Record<string, string> = Object.fromEntries(Object.entries(SNAKE).map(([c, s]) => [s, c]))

export function groupToSnake(g: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(g).map(([k, v]) => [SNAKE[k] ?? k, Array.isArray(v) ? v.slice() : v]))
}

export function groupToCamel(g: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(g).map(([k, v]) => [CAMEL[k] ?? k, Array.isArray(v) ? v.slice() : v]))
}
