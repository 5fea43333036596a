// The memory planner's arithmetic: bytes per component of a training step, from the model's
// config and its tensors' storage types, without loading any weight.
//
// Start: the per-operation accounting for LLaMA of Han et al. 2024 ("Parameter-Efficient
// Fine-Tuning for Large Models: A Comprehensive Survey", Table I): the Q/K/V and output
// projections (d×d weights on b×l×d inputs), the attention scores (O(l²) per head over the
// b×l×3d Q/K/V), the FFN (d×4d on b×l×d and b×l×4d) and the KV cache L × 2 × b × l × d_head × n_head.
// Extended here with what *training* keeps, which the survey's inference table does not:
//   - every op's output that candle's autograd graph holds until backward frees it
//     (crates/peft-napi/src/graph.rs), counted per op below (ACTIVATION_COUNTS) and scaled by
//     one factor calibrated on measured peak RSS (bench/plan-accuracy.ts, docs/memory.md);
//   - the adapter's gradients (f32) and AdamW's two f32 moments per trainable parameter;
//   - gradient checkpointing (crates/peft-core/src/model/checkpoint.rs), which keeps only each
//     decoder layer's input and recomputes one layer at a time in backward;
//   - the chunked LM head + cross-entropy (crates/peft-core/src/ops/linear_cross_entropy.rs:
//     ~2^23 logits per chunk, over a quantized head too), where the full logits never exist.
// There is no KV cache in training (it is a generation-time term), so it is reported apart.
import { dtypeNames, dtypeOfStorage, findDType } from '../dtype'

/** One base tensor as it will sit in memory: its element count and stored type. */
export interface PlanTensor {
  name: string
  shape: number[]
  /** ggml / safetensors type name: F32, F16, BF16, Q4_0, Q4K, ... */
  type: string
  /** Bytes in memory; when omitted, from `type` and the element count. */
  bytes?: number
}

export interface ModelShape {
  vocabSize: number
  hiddenSize: number
  intermediateSize: number
  layers: number
  heads: number
  kvHeads: number
  headDim: number
  tiedEmbeddings: boolean
}

export interface PlanInput {
  shape: ModelShape
  tensors: PlanTensor[]
  batchSize: number
  seqLen: number
  trainableParameters: number
  /** Trainable parameters per decoder layer's targeted linear: [output features, rank] (LoRA's B·A path). */
  adapterPaths: { out: number; rank: number }[]
  gradientCheckpointing: boolean
  optimizer: 'adamw' | 'sgd'
  /** false: the full [b, l, vocab] logits are built (forward() without returnLogits: false). */
  chunkedLoss: boolean
  /** Node + the addon before anything is loaded. */
  baselineBytes: number
  /** The checkpoint's bytes mapped (and resident) at once while the loader copies them out: a
   * safetensors file's whole size; a GGUF's largest tensor (its pages are dropped as copied). */
  fileBytes: number
  /**
   * Frozen matrices stay in their storage type (no load dtype): block types and f16/bf16 are
   * then `QWeight`s, multiplied through the tiled qlinear (crates/peft-core/src/ops/qlinear.rs).
   */
  keptInStorage: boolean
  /** Threads in the addon's compute pool (default 1): each keeps a dequantization scratch. */
  computeThreads?: number
}

export interface MemoryPlan {
  components: Record<ComponentName, number>
  /** The sum of the components: the training step's peak. */
  trainingTotal: number
  /**
   * While loading, the mapped checkpoint file is resident beside the weights copied out of it
   * (peak RSS counts both): baseline + base weights + file bytes. Measured: the f32 SmolLM2
   * load peaks at 1161 MiB for 513 MiB of weights (docs/memory.md).
   */
  loadPeak: number
  /** The process's planned peak: the larger of the load and the training step. */
  total: number
  /** Generation only, not part of `total`: L × 2 × b × l × d_head × n_kv_heads × 4 bytes. */
  kvCacheBytes: number
}

export const COMPONENTS = ['baseline', 'baseWeights', 'adapterWeights', 'gradients', 'optimizerState', 'activations', 'logitsLoss', 'workspace'] as const
export type ComponentName = (typeof COMPONENTS)[number]

/** Bytes per block / values per block of ggml's block types (ggml-common.h block structs); the float types' sizes are the core's (`src/dtype.ts`). */
const GGML_BLOCKS: Record<string, [number, number]> = {
  Q4_0: [18, 32], Q4_1: [20, 32], Q5_0: [22, 32], Q5_1: [24, 32],
  Q8_0: [34, 32], Q8_1: [36, 32], Q2K: [84, 256], Q3K: [110, 256], Q4K: [144, 256], Q5K: [176, 256], Q6K: [210, 256], Q8K: [292, 256],
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1)

export function typeBytes(type: string, elements: number): number {
  const float = findDType(type) ?? dtypeOfStorage(type)
  if (float) return elements * float.bytes
  const b = GGML_BLOCKS[type.toUpperCase().replace('_K', 'K')]
  if (!b) throw new Error(`planMemory: tensor type "${type}" is not known (expected ${dtypeNames()}, or one of ${Object.keys(GGML_BLOCKS).join(', ')})`)
  return Math.ceil(elements / b[1]) * b[0]
}

/** Whether a tensor kept in its storage type is a `QWeight` (block types and half precision alike). */
export const isQWeight = (type: string) => !/^F32$/i.test(type)

/**
 * Outputs each decoder layer's forward leaves in the graph, in f32 elements per token (or per
 * score), counted from `CausalLm::block` / `attention` (crates/peft-core/src/model/decoder.rs):
 *   d (hidden): input norm, o_proj, residual, post-attention norm, down_proj, residual   = 6
 *   q (heads·hd): q_proj, [b,h,t,hd] copy, RoPE, probs·V, the [b,t,h·hd] copy            = 5
 *   kv (kv_heads·hd): k_proj + copy + RoPE, v_proj + copy                                 = 5
 *   f (intermediate): gate_proj, up_proj, SiLU, the product                              = 4
 *   scores (b·heads·l²): the probabilities of `ops::attention_probs` (the scores inside it) = 1
 * A LoRA-targeted linear adds x·A (rank) and one output: `ops::lora_add` fuses ·B, the scaling
 * and the sum (crates/peft-core/src/tuners/lora/layer.rs). Counting 3 outputs there (unfused)
 * over-predicted the SmolLM2 runs by 28%; this count, with the l² term confirmed by 4×256 vs
 * 2×512 (measured difference 532 MiB, counted 558), is within 3% (docs/memory.md). Before
 * `attention_probs` the Q·Kᵀ scores were a graph tensor too (scores: 2).
 */
export const ACTIVATION_COUNTS = { d: 6, q: 5, kv: 5, f: 4, scores: 1, loraOut: 1 }

/**
 * Measured over counted, for what the count misses (temporaries inside fused ops, allocator
 * slack): 1, as the SmolLM2-135M runs measured it (bench/plan-accuracy.ts, docs/memory.md).
 */
export const ACTIVATION_CALIBRATION = 1.0

/** The LM head + cross-entropy run about this many logits per chunk (linear_cross_entropy.rs). */
const LOSS_CHUNK_ELEMENTS = 2 ** 23
/**
 * Each thread that runs the quantized matmul's tiles keeps a scratch of this much for them, for
 * the life of the process: the compute pool's threads and the calling thread
 * (`SCRATCH_FLOATS` in crates/peft-core/src/ops/qlinear.rs).
 */
export const DEQUANT_SCRATCH_BYTES = 4 * 2 ** 20
const F32 = 4

/** One decoder layer's saved activations in bytes (the survey's Table I rows, for training). */
export function layerActivationBytes(s: ModelShape, b: number, l: number, adapterPathsPerLayer: { out: number; rank: number }[]): number {
  const t = b * l
  const c = ACTIVATION_COUNTS
  const q = s.heads * s.headDim
  const kv = s.kvHeads * s.headDim
  let elements = t * (c.d * s.hiddenSize + c.q * q + c.kv * kv + c.f * s.intermediateSize) + c.scores * b * s.heads * l * l
  for (const p of adapterPathsPerLayer) elements += t * (p.rank + c.loraOut * p.out)
  return elements * F32 * ACTIVATION_CALIBRATION
}

export function computePlan(p: PlanInput): MemoryPlan {
  const s = p.shape
  const b = p.batchSize
  const l = p.seqLen
  const baseWeights = p.tensors.reduce((a, t) => a + (t.bytes ?? typeBytes(t.type, numel(t.shape))), 0)
  const perLayerPaths = p.adapterPaths.slice(0, Math.ceil(p.adapterPaths.length / Math.max(1, s.layers)))
  const layer = layerActivationBytes(s, b, l, perLayerPaths)
  // Checkpointing: each layer's input [b, l, d] stays; one layer is recomputed at a time.
  const layerInputs = s.layers * b * l * s.hiddenSize * F32
  const activations = p.gradientCheckpointing ? layerInputs + layer : s.layers * layer + layerInputs
  // Chunked: a chunk's logits, their softmax and gradient (3 × chunk), the same over a QWeight
  // head (crates/peft-core/src/model/loss.rs); the full path keeps the [b, l, V] logits,
  // log-softmax and their gradient.
  // A chunk is at most every token's logits (a small batch over a small vocabulary).
  const chunk = Math.min(LOSS_CHUNK_ELEMENTS, b * l * s.vocabSize)
  const logitsLoss = p.chunkedLoss ? 3 * chunk * F32 + b * l * s.hiddenSize * F32 : 3 * b * l * s.vocabSize * F32
  const quantized = p.keptInStorage && p.tensors.some((t) => t.shape.length > 1 && isQWeight(t.type))
  const components: Record<ComponentName, number> = {
    baseline: p.baselineBytes,
    baseWeights,
    adapterWeights: p.trainableParameters * F32,
    gradients: p.trainableParameters * F32,
    optimizerState: p.optimizer === 'adamw' ? 2 * p.trainableParameters * F32 : 0,
    activations,
    logitsLoss,
    // The backward's gradient of one layer's activations in flight, and the dequantization
    // scratch of each compute thread and of the calling thread.
    workspace: layer + (quantized ? DEQUANT_SCRATCH_BYTES * ((p.computeThreads ?? 1) + 1) : 0),
  }
  const trainingTotal = COMPONENTS.reduce((a, k) => a + components[k], 0)
  const loadPeak = p.baselineBytes + baseWeights + p.fileBytes
  return { components, trainingTotal, loadPeak, total: Math.max(trainingTotal, loadPeak), kvCacheBytes: s.layers * 2 * b * l * s.headDim * s.kvHeads * F32 }
}
