// Optimizer state in a checkpoint: `optimizer.safetensors`. The moments of a LoRA run are tens
// of MB (52 MB on SmolLM2); as base64 inside JSON.stringify they blocked the event loop at each
// checkpoint. Here the tensors are written as raw float32 (safetensors, named
// `state.<param>.<key>`) with one vectored write on the libuv pool; the small rest of the state
// dict (steps, param_groups) rides in the header's `__metadata__`. Old checkpoints'
// `optimizer.json` is still read on resume.
import { existsSync, readFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import type { OptimizerStateDict } from '../optim/optimizer'

export const OPTIMIZER_FILE = 'optimizer.safetensors'
const LEGACY_FILE = 'optimizer.json'
const FORMAT = 'peft-node-optimizer'

type Raw = { shape: number[]; dtype?: string; data: unknown }

function isTensor(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && Array.isArray((v as Raw).shape) && 'data' in v
}

/** A state tensor's little-endian float32 bytes (raw values, or the base64 of `stateDict()`). */
function tensorBytes(t: Raw): Uint8Array {
  if (t.data instanceof Float32Array) return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
  if (typeof t.data === 'string') return Buffer.from(t.data, 'base64')
  return new Uint8Array(Float32Array.from(t.data as number[]).buffer)
}

/** Writes `sd` to `file` as safetensors and fsyncs it; the tensor bytes are never copied into one buffer. */
export async function writeOptimizerState(file: string, sd: OptimizerStateDict): Promise<void> {
  const header: Record<string, unknown> = {}
  const chunks: Uint8Array[] = []
  const rest: OptimizerStateDict['state'] = {}
  let offset = 0
  for (const [index, entry] of Object.entries(sd.state)) {
    rest[index] = {}
    for (const [key, value] of Object.entries(entry)) {
      if (!isTensor(value)) {
        rest[index][key] = value
        continue
      }
      const bytes = tensorBytes(value)
      header[`state.${index}.${key}`] = { dtype: 'F32', shape: value.shape, data_offsets: [offset, offset + bytes.byteLength] }
      chunks.push(bytes)
      offset += bytes.byteLength
    }
  }
  header.__metadata__ = { format: FORMAT, state_dict: JSON.stringify({ state: rest, param_groups: sd.param_groups }) }
  let json = JSON.stringify(header)
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8) // the data starts 8-byte aligned
  const prefix = Buffer.alloc(8)
  prefix.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
  const fh = await open(file, 'w')
  try {
    await fh.writev([prefix, Buffer.from(json), ...chunks])
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** The optimizer state dict of checkpoint `dir`: `optimizer.safetensors`, else an old checkpoint's `optimizer.json`. */
export function readOptimizerState(dir: string): OptimizerStateDict {
  const file = join(dir, OPTIMIZER_FILE)
  if (!existsSync(file) && existsSync(join(dir, LEGACY_FILE))) {
    return JSON.parse(readFileSync(join(dir, LEGACY_FILE), 'utf8')) as OptimizerStateDict
  }
  const buf = readFileSync(file)
  const bad = (what: string) => new Error(`${file}: ${what}`)
  if (buf.byteLength < 8) throw bad('expected a safetensors file, found fewer than 8 bytes')
  const n = Number(buf.readBigUInt64LE(0))
  if (n > buf.byteLength - 8) throw bad(`the header claims ${n} bytes, but the file has ${buf.byteLength - 8} after its length`)
  let header: Record<string, unknown>
  try {
    header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>
  } catch (e) {
    throw bad(`invalid header JSON: ${(e as Error).message}`)
  }
  const meta = header.__metadata__ as Record<string, unknown> | undefined
  if (meta?.format !== FORMAT || typeof meta.state_dict !== 'string') throw bad(`expected __metadata__.format "${FORMAT}" with a state_dict`)
  const sd = JSON.parse(meta.state_dict) as OptimizerStateDict
  const data = buf.subarray(8 + n)
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const info = (entry ?? {}) as { dtype?: string; shape?: number[]; data_offsets?: [number, number] }
    const m = /^state\.(\d+)\.(\w+)$/.exec(name)
    const [begin, end] = info.data_offsets ?? [-1, -1]
    if (!m || info.dtype !== 'F32' || !Array.isArray(info.shape) || !(begin >= 0 && begin <= end && end <= data.byteLength && (end - begin) % 4 === 0)) {
      throw bad(`tensor "${name}": expected state.<index>.<key>, dtype F32 and data inside the file`)
    }
    const values = new Float32Array((end - begin) / 4)
    new Uint8Array(values.buffer).set(data.subarray(begin, end))
    sd.state[m[1]] ??= {}
    sd.state[m[1]][m[2]] = { shape: info.shape, dtype: 'float32', data: values }
  }
  return sd
}
