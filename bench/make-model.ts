// Writes a LLaMA checkpoint with SmolLM2-135M's shape and random weights (config.json +
// model.safetensors, f32) and a fixed batch of token ids (inputs.json), so that this
// benchmark and the PyTorch one train on the same model and the same data. Seeded: the
// same seed gives the same bytes.
import { mkdirSync, openSync, writeSync, closeSync, writeFileSync, existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

export const SMOLLM2_135M = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 49152,
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  head_dim: 64,
  hidden_act: 'silu',
  max_position_embeddings: 8192,
  rms_norm_eps: 1e-5,
  rope_theta: 100000,
  rope_scaling: null,
  tie_word_embeddings: true,
  attention_bias: false,
  mlp_bias: false,
  initializer_range: 0.02,
  bos_token_id: 0,
  eos_token_id: 0,
  torch_dtype: 'float32',
}

export type BenchConfig = typeof SMOLLM2_135M

/** Llama-3.2-1B's shape (16 layers, hidden 2048, 32 / 8 heads, MLP 8192, vocab 128256, tied). */
export const LLAMA_3_2_1B: BenchConfig = {
  ...SMOLLM2_135M,
  vocab_size: 128256,
  hidden_size: 2048,
  intermediate_size: 8192,
  num_hidden_layers: 16,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  head_dim: 64,
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  bos_token_id: 128000,
  eos_token_id: 128001,
}

/** The shapes `npm run bench` knows, with the batch each is measured at. */
export const SHAPES: Record<string, { config: BenchConfig; batch: number; seq: number; tiled: boolean }> = {
  smollm2: { config: SMOLLM2_135M, batch: 4, seq: 256, tiled: false },
  // 5 GB of f32: one random block repeated through each matrix (seconds instead of minutes;
  // the values do not change the timing).
  'llama-1b': { config: LLAMA_3_2_1B, batch: 1, seq: 512, tiled: true },
}

/** xorshift128+ then Box-Muller: fast, seeded, good enough for random weights. */
function normalSource(seed: number) {
  // Two xorshift32 generators with different triples, summed; seeds must be non-zero.
  let a = (Math.imul(seed + 1, 0x9e3779b1) | 0) || 1
  let b = (Math.imul(seed + 7, 0x85ebca6b) ^ 0x6a09e667) | 0 || 1
  const u32 = () => {
    a ^= a << 13; a ^= a >>> 17; a ^= a << 5
    b ^= b << 17; b ^= b >>> 7; b ^= b << 9
    return ((a + b) >>> 0)
  }
  const uniform = () => (u32() + 0.5) / 4294967296
  return {
    u32,
    fill(out: Float32Array, std: number) {
      for (let i = 0; i < out.length; i += 2) {
        const r = Math.sqrt(-2 * Math.log(uniform())) * std
        const t = 2 * Math.PI * uniform()
        out[i] = r * Math.cos(t)
        if (i + 1 < out.length) out[i + 1] = r * Math.sin(t)
      }
    },
  }
}

/** [name, shape] in checkpoint order (tied embeddings: no lm_head). */
export function weightShapes(c: BenchConfig): [string, number[]][] {
  const h = c.hidden_size
  const q = c.num_attention_heads * c.head_dim
  const kv = c.num_key_value_heads * c.head_dim
  const out: [string, number[]][] = [['model.embed_tokens.weight', [c.vocab_size, h]]]
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`
    out.push(
      [`${p}.input_layernorm.weight`, [h]],
      [`${p}.self_attn.q_proj.weight`, [q, h]],
      [`${p}.self_attn.k_proj.weight`, [kv, h]],
      [`${p}.self_attn.v_proj.weight`, [kv, h]],
      [`${p}.self_attn.o_proj.weight`, [h, q]],
      [`${p}.post_attention_layernorm.weight`, [h]],
      [`${p}.mlp.gate_proj.weight`, [c.intermediate_size, h]],
      [`${p}.mlp.up_proj.weight`, [c.intermediate_size, h]],
      [`${p}.mlp.down_proj.weight`, [h, c.intermediate_size]],
    )
  }
  out.push(['model.norm.weight', [h]])
  return out
}

export interface MakeOptions {
  seed?: number
  batch?: number
  seq?: number
  /** Overrides of the config (smaller models for profiling). */
  config?: Partial<BenchConfig>
  /** The stored type (default float32); bfloat16 keeps the top 16 bits of each f32 value. */
  dtype?: 'float32' | 'bfloat16'
  /**
   * Repeat one random block of 2^20 values through each matrix instead of drawing every value:
   * seconds instead of many minutes for a 1B model, for memory measurements where the values
   * do not matter (bench/plan-accuracy.ts).
   */
  tiled?: boolean
}

/**
 * Writes the checkpoint into `dir` (created if needed). Norm weights are 1 and every
 * matrix N(0, 0.02²), as transformers initialises a fresh LlamaForCausalLM.
 * Skips the work when `dir` already holds the same model (same config, seed, batch shape).
 */
export function writeRandomLlama(dir: string, opts: MakeOptions = {}): { config: BenchConfig; inputs: number[][] } {
  const seed = opts.seed ?? 0
  const batch = opts.batch ?? 4
  const seq = opts.seq ?? 256
  const bf16 = opts.dtype === 'bfloat16'
  const config = { ...SMOLLM2_135M, ...opts.config, ...(bf16 ? { torch_dtype: 'bfloat16' } : {}) }
  const elementBytes = bf16 ? 2 : 4
  const stamp = JSON.stringify({ config, seed, batch, seq, ...(opts.tiled ? { tiled: true } : {}) })
  mkdirSync(dir, { recursive: true })
  const stampPath = join(dir, 'bench-stamp.json')
  if (existsSync(stampPath) && readFileSync(stampPath, 'utf8') === stamp && existsSync(join(dir, 'model.safetensors'))) {
    return { config, inputs: JSON.parse(readFileSync(join(dir, 'inputs.json'), 'utf8')) }
  }
  const rng = normalSource(seed)
  const shapes = weightShapes(config)
  const block = opts.tiled ? new Float32Array(1 << 20) : null
  if (block) rng.fill(block, config.initializer_range)
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } }
  let offset = 0
  for (const [name, shape] of shapes) {
    const bytes = shape.reduce((a, b) => a * b, 1) * elementBytes
    header[name] = { dtype: bf16 ? 'BF16' : 'F32', shape, data_offsets: [offset, offset + bytes] }
    offset += bytes
  }
  let json = JSON.stringify(header)
  json += ' '.repeat((8 - (json.length % 8)) % 8) // keep the data 8-byte aligned
  const fd = openSync(join(dir, 'model.safetensors'), 'w')
  try {
    const len = Buffer.alloc(8)
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
    writeSync(fd, len)
    writeSync(fd, Buffer.from(json))
    for (const [, shape] of shapes) {
      const t = new Float32Array(shape.reduce((a, b) => a * b, 1))
      if (shape.length === 1) t.fill(1)
      else if (block) for (let i = 0; i < t.length; i += block.length) t.set(block.subarray(0, Math.min(block.length, t.length - i)), i)
      else rng.fill(t, config.initializer_range)
      if (!bf16) writeSync(fd, new Uint8Array(t.buffer))
      else {
        const u = new Uint32Array(t.buffer)
        const half = new Uint16Array(u.length)
        for (let i = 0; i < u.length; i++) half[i] = u[i] >>> 16 // truncation: random weights, any rounding will do
        writeSync(fd, new Uint8Array(half.buffer))
      }
    }
  } finally {
    closeSync(fd)
  }
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2))
  const inputs = Array.from({ length: batch }, () => Array.from({ length: seq }, () => rng.u32() % config.vocab_size))
  writeFileSync(join(dir, 'inputs.json'), JSON.stringify(inputs))
  writeFileSync(stampPath, stamp)
  return { config, inputs }
}

if (require.main === module) {
  const dir = process.argv[2]
  const shape = SHAPES[process.argv[4] ?? 'smollm2']
  if (!dir || !shape) {
    console.error(`usage: tsx bench/make-model.ts DIR [seed] [${Object.keys(SHAPES).join('|')}]`)
    process.exit(2)
  }
  const t0 = Date.now()
  writeRandomLlama(dir, { seed: Number(process.argv[3] ?? 0), config: shape.config, batch: shape.batch, seq: shape.seq, tiled: shape.tiled })
  console.log(`wrote ${dir} in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
}
