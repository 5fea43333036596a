// The planner's view of a model: its shape and base tensors, from a config object, a
// checkpoint folder's config.json, or a GGUF file's header (no tensor data is read).
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { native } from '../native'
import { typeBytes, type ModelShape, type PlanTensor } from './formula'
import { dtypeNames, findDType } from '../dtype'

function dim(config: Record<string, unknown>, key: string, where: string, fallback?: number): number {
  const v = config[key] ?? fallback
  if (!Number.isInteger(v) || (v as number) <= 0 || (v as number) > 2 ** 31) throw new Error(`planMemory: ${where}: \`${key}\` must be a positive integer, found ${JSON.stringify(config[key])}`)
  return v as number
}

export function shapeOf(config: Record<string, unknown>, where: string): ModelShape {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw new Error(`planMemory: ${where}: expected a config object`)
  const hiddenSize = dim(config, 'hidden_size', where)
  const heads = dim(config, 'num_attention_heads', where)
  return {
    vocabSize: dim(config, 'vocab_size', where),
    hiddenSize,
    intermediateSize: dim(config, 'intermediate_size', where),
    layers: dim(config, 'num_hidden_layers', where),
    heads,
    kvHeads: dim(config, 'num_key_value_heads', where, heads),
    headDim: dim(config, 'head_dim', where, Math.floor(hiddenSize / heads)),
    tiedEmbeddings: config.tie_word_embeddings === true,
  }
}

/** The linear layers of one LLaMA decoder layer: [name, out features, in features]. */
export function layerLinears(s: ModelShape): [string, number, number][] {
  const q = s.heads * s.headDim
  const kv = s.kvHeads * s.headDim
  return [
    ['self_attn.q_proj', q, s.hiddenSize], ['self_attn.k_proj', kv, s.hiddenSize], ['self_attn.v_proj', kv, s.hiddenSize], ['self_attn.o_proj', s.hiddenSize, q],
    ['mlp.gate_proj', s.intermediateSize, s.hiddenSize], ['mlp.up_proj', s.intermediateSize, s.hiddenSize], ['mlp.down_proj', s.hiddenSize, s.intermediateSize],
  ]
}

/** The base tensors a LLaMA config implies, all of `type` (norms in f32, as loaded). */
export function tensorsFromShape(s: ModelShape, type: string): PlanTensor[] {
  const out: PlanTensor[] = [{ name: 'model.embed_tokens.weight', shape: [s.vocabSize, s.hiddenSize], type }]
  for (let i = 0; i < s.layers; i++) {
    for (const [name, o, n] of layerLinears(s)) out.push({ name: `model.layers.${i}.${name}.weight`, shape: [o, n], type })
    out.push({ name: `model.layers.${i}.input_layernorm.weight`, shape: [s.hiddenSize], type: 'F32' }, { name: `model.layers.${i}.post_attention_layernorm.weight`, shape: [s.hiddenSize], type: 'F32' })
  }
  out.push({ name: 'model.norm.weight', shape: [s.hiddenSize], type: 'F32' })
  if (!s.tiedEmbeddings) out.push({ name: 'lm_head.weight', shape: [s.vocabSize, s.hiddenSize], type })
  return out
}

/** `torch_dtype` / `dtype` of a config.json as a type name (F32 when absent). */
export function storageType(config: Record<string, unknown>, where: string): string {
  const d = config.torch_dtype ?? config.dtype
  if (d === undefined || d === null) return 'F32'
  const t = findDType(String(d))
  if (!t) throw new Error(`planMemory: ${where}: \`torch_dtype\` ${JSON.stringify(d)} is not one of ${dtypeNames()}`)
  return t.storage
}

export interface PlannedModel {
  shape: ModelShape
  tensors: PlanTensor[]
  /** The checkpoint's tensor bytes as stored (before any dtype conversion). */
  fileBytes: number
}

const bytesOf = (tensors: PlanTensor[]) => tensors.reduce((a, t) => a + (t.bytes ?? typeBytes(t.type, t.shape.reduce((x, y) => x * y, 1))), 0)

function fromConfig(config: Record<string, unknown>, where: string, as: string | undefined): PlannedModel {
  const shape = shapeOf(config, where)
  const stored = tensorsFromShape(shape, storageType(config, where))
  return { shape, tensors: as ? tensorsFromShape(shape, as) : stored, fileBytes: bytesOf(stored) }
}

/**
 * `dtype` given: every base tensor in that type (the loader converts); otherwise as stored
 * (GGUF block types, safetensors bf16/f16), norms and biases in f32. `baseType` (a ggml type
 * such as Q4_0): the matrices as a file of that type would store them, for a model not yet
 * converted (what a quantized base would need).
 */
export function plannedModel(model: string | Record<string, unknown>, dtype?: string, baseType?: string): PlannedModel {
  if (baseType === undefined) return plannedAsStored(model, dtype)
  if (dtype !== undefined) throw new Error('planMemory: give dtype (the load conversion) or baseType (a file stored in that type), not both')
  typeBytes(baseType, 1) // refuses an unknown type, naming the known ones
  const m = plannedAsStored(model, undefined)
  const tensors = m.tensors.map((t) => (t.shape.length > 1 ? { name: t.name, shape: t.shape, type: baseType } : t))
  return { shape: m.shape, tensors, fileBytes: bytesOf(tensors) }
}

function plannedAsStored(model: string | Record<string, unknown>, dtype?: string): PlannedModel {
  const as = dtype === undefined ? undefined : findDType(dtype)?.storage
  if (dtype !== undefined && !as) throw new Error(`planMemory: dtype: expected one of ${dtypeNames()}, found ${JSON.stringify(dtype)}`)
  if (typeof model !== 'string') return fromConfig(model, 'config', as)
  let isFile: boolean
  try {
    isFile = statSync(model).isFile()
  } catch {
    throw new Error(`planMemory: ${model}: no such file or folder (expected a checkpoint folder with config.json, a .gguf file, or a config object)`)
  }
  if (isFile) {
    const g = native.ggufSummary(model)
    const shape = shapeOf(JSON.parse(g.configJson) as Record<string, unknown>, model)
    const tensors = g.tensors.map((t) => (as && t.shape.length > 1 ? { name: t.name, shape: t.shape, type: as } : { name: t.name, shape: t.shape, type: t.ggmlType, bytes: as ? undefined : t.bytes }))
    // The GGUF loader drops each tensor's mapped pages once it is copied out (GgufFile::release):
    // one tensor's bytes, not the file's, sit beside the weights while loading.
    return { shape, tensors, fileBytes: g.tensors.reduce((a, t) => Math.max(a, t.bytes), 0) }
  }
  const path = join(model, 'config.json')
  let config: Record<string, unknown>
  try {
    config = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>
  } catch (e) {
    throw new Error(`planMemory: ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing (a checkpoint folder needs config.json)' : (e as Error).message}`)
  }
  return fromConfig(config, path, as)
}
