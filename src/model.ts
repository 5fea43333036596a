import { native, loadNative, wantsCuda, type NativeModel } from './native'
import { Tensor, type DType } from './tensor'
import { Parameter } from './parameter'
import { adapterNameList, nativeBatch, seedArg, tokenIdList, type IdRows } from './inputs'
import { Tokenizer } from './tokenizer'
import { abortHandle, fitContext, generationArgs, streamSteps, type GenerateOptions } from './generation'
import { resolvePretrained } from './hub/resolve'
import type { HubOptions } from './hub/settings'

/** With a Hub repo id (`org/name`) for the path, the `HubOptions` apply (revision, file, token, ...). */
export interface LoadOptions extends HubOptions {
  /**
   * Converts every weight to this dtype on load. Left out, the frozen base weights (every
   * linear and the embedding) keep their storage type: a GGUF's quantization (Q4_0, Q4_K, Q6_K,
   * ...) or a safetensors checkpoint's bfloat16/float16, at a fraction of float32's memory,
   * and adapters train over them exactly as over float32 weights (the rest is float32). Give
   * `dtype: 'float32'` to train the base weights themselves (full fine-tuning, BitFit on
   * weights, sparse masks).
   */
  dtype?: DType
  /** "cpu" (default), "cuda" or "cuda:N" (needs the CUDA build). */
  device?: string
}

export interface ForwardInput {
  inputIds: IdRows
  attentionMask?: IdRows
  /** Targets; -100 marks positions that are ignored. Shifted by one inside, as transformers does. */
  labels?: IdRows
  /** Seeds adapter dropout (and DyLoRA's sampled rank) for this call in training mode, for reproducible steps. */
  dropoutSeed?: number
  /** Position ids [b, t] (default 0..t-1 per row); packed rows restart them per example. */
  positionIds?: IdRows
  /** Packing: example ids [b, t]; a token attends only to earlier tokens of its own example. */
  segmentIds?: IdRows
  /** Mixed batch (PEFT's `adapter_names`): the adapter of each row, "__base__" for none. Inference only. */
  adapterNames?: string[]
  /**
   * With `labels`, `false` returns the loss alone: the LM head and the cross-entropy then run
   * a chunk of tokens at a time, so the [batch, seq, vocab] logits and their gradient are never
   * built whole (what the Trainer does). Default `true`: logits and loss, as before.
   */
  returnLogits?: boolean
}

export interface ForwardOutput {
  logits: Tensor
  loss?: Tensor
}

/** `forward` with `returnLogits: false`: the loss only. */
export interface LossOutput {
  loss: Tensor
}

/** The model's config, with Hugging Face's key names (every key resolved), plus `modelType`. */
export type LlamaConfig = Record<string, unknown> & {
  /** transformers' `model_type`: llama, mistral, qwen2, qwen3, phi3 or gemma3_text. */
  modelType: string
  model_type: string
  vocab_size: number
  hidden_size: number
  num_hidden_layers: number
  num_attention_heads: number
  num_key_value_heads: number
  head_dim: number
  /** The context length: generation stops there. */
  max_position_embeddings: number
  eos_token_id: number | number[] | null
}

/** The model types `LlamaModel.fromPretrained` takes; `AutoModelForCausalLM` takes every supported one. */
const LLAMA_TYPES = ['llama']

/** A causal language model of the LLaMA family on the native core (LLaMA, Mistral, Qwen2/2.5, Qwen3, Phi-3, Gemma 3). */
export class LlamaModel {
  #config: LlamaConfig | null = null
  #tokenizer: Tokenizer | null | undefined = undefined

  /** @internal */
  constructor(private readonly inner: NativeModel) {}

  /**
   * Loads a Hugging Face checkpoint folder (config.json + safetensors) or a `.gguf` file, or a
   * Hub repo id (`org/name`), downloaded into the shared Hugging Face cache (docs/hub.md).
   */
  static async fromPretrained(path: string, opts: LoadOptions = {}): Promise<LlamaModel> {
    const model = await loadAny(path, opts)
    if (!LLAMA_TYPES.includes(model.config.modelType)) {
      const type = model.config.modelType
      model.dispose()
      throw new Error(`${path}: a ${type} model; LlamaModel.fromPretrained loads LLaMA only, use AutoModelForCausalLM.fromPretrained for ${type}`)
    }
    return model
  }

  /** @internal */
  get native(): NativeModel {
    return this.inner
  }

  get config(): LlamaConfig {
    if (!this.#config) {
      const c = JSON.parse(this.inner.configJson()) as LlamaConfig
      this.#config = { ...c, modelType: c.model_type }
    }
    return this.#config
  }

  /** The tokenizer shipped with the checkpoint (tokenizer.json or GGUF metadata), or null. */
  get tokenizer(): Tokenizer | null {
    if (this.#tokenizer === undefined) {
      const t = this.inner.tokenizer()
      this.#tokenizer = t ? new Tokenizer(t) : null
    }
    return this.#tokenizer
  }

  forward(input: ForwardInput & { returnLogits: false }): Promise<LossOutput>
  forward(input: ForwardInput): Promise<ForwardOutput>
  async forward(input: ForwardInput): Promise<ForwardOutput | LossOutput> {
    const batch = nativeBatch('', input, this.config.vocab_size)
    const dropoutSeed = input.dropoutSeed === undefined ? undefined : seedArg('dropoutSeed', input.dropoutSeed)
    const adapterNames = adapterNameList(input.adapterNames)
    const returnLogits = input.returnLogits ?? true
    if (typeof returnLogits !== 'boolean') throw new Error(`returnLogits: expected a boolean, found ${typeof returnLogits}`)
    if (!returnLogits && !batch.labels) throw new Error('returnLogits: false needs `labels` (without them the logits are the only output)')
    const [logits, loss] = await this.inner.forward(batch, { dropoutSeed, adapterNames, returnLogits })
    if (!returnLogits) return { loss: new Tensor(logits) }
    return loss ? { logits: new Tensor(logits), loss: new Tensor(loss) } : { logits: new Tensor(logits) }
  }

  /** `[name, Parameter]` pairs with Hugging Face names, e.g. `model.layers.0.self_attn.q_proj.weight`. */
  namedParameters(): [string, Parameter][] {
    return this.inner.parameters().map((p) => [p.name, new Parameter(this.inner, p.name, p.shape, p.storage ?? null)])
  }

  parameters(): Parameter[] {
    return this.namedParameters().map(([, p]) => p)
  }

  /**
   * transformers' `gradient_checkpointing_enable()`: forwards that build a graph keep only each
   * decoder layer's input and recompute the layer during `backward()` (about one more forward of
   * compute for activation memory of one layer). Gradients are unchanged, dropout included.
   * Generation and inference are unaffected. Dispose the model only after the backward.
   */
  gradientCheckpointingEnable(): void {
    this.inner.setGradientCheckpointing(true)
  }

  gradientCheckpointingDisable(): void {
    this.inner.setGradientCheckpointing(false)
  }

  get isGradientCheckpointing(): boolean {
    return this.inner.gradientCheckpointing()
  }

  /** Clears every accumulated gradient. */
  zeroGrad(): void {
    this.inner.zeroGrad()
  }

  /** The tokens to stop at by default: the config's EOS ids. */
  get defaultStopTokenIds(): number[] {
    const eos = this.config.eos_token_id
    const ids = eos == null ? [] : Array.isArray(eos) ? eos : [eos]
    const tokEos = this.tokenizer?.eosToken?.id
    return tokEos != null && !ids.includes(tokEos) ? [...ids, tokEos] : ids
  }

  /**
   * Continues each prompt; returns prompt + new ids. A single prompt (`number[]`) gives a
   * single row back; a batch of prompts of different lengths is left-padded inside.
   */
  async generate(ids: ArrayLike<number>, opts?: GenerateOptions): Promise<number[]>
  async generate(ids: ArrayLike<number>[], opts?: GenerateOptions): Promise<number[][]>
  async generate(ids: ArrayLike<number> | ArrayLike<number>[], opts: GenerateOptions = {}): Promise<number[] | number[][]> {
    const { prompts, single } = promptRows(ids, this.config.vocab_size)
    const args = fitContext(prompts, generationArgs(opts, this.defaultStopTokenIds, this.config.vocab_size), this.config.max_position_embeddings)
    opts.signal?.throwIfAborted() // the native loop checks the flag only after its first step
    const out = await this.inner.generate(prompts, args, undefined, abortHandle(opts.signal))
    return single ? out[0] : out
  }

  /**
   * The async-iterator form of `generate` for one prompt: yields each new token id, except the
   * stop token that ends it (`<|im_end|>` is not text; `includeStopToken: true` yields it too).
   */
  async *stream(ids: ArrayLike<number>, opts: GenerateOptions = {}): AsyncGenerator<number> {
    const { prompts } = promptRows(ids, this.config.vocab_size)
    const args = fitContext(prompts, generationArgs(opts, this.defaultStopTokenIds, this.config.vocab_size), this.config.max_position_embeddings)
    opts.signal?.throwIfAborted()
    let result: number[][] | undefined
    const run = (onStep: (row: number[]) => void, abort: Parameters<NativeModel['generate']>[3]) =>
      this.inner.generate(prompts, args, onStep, abort).then((r) => (result = r))
    // A stop token ends the row, so it can only be the last token.
    const stops = new Set(opts.includeStopToken ? [] : args.stopTokenIds)
    let streamed = 0
    for await (const row of streamSteps(run, opts.signal)) {
      if (row[0] < 0) continue
      streamed++
      if (!stops.has(row[0])) yield row[0]
    }
    // The last step callbacks can arrive after the generation settles; its result is
    // authoritative, so whatever was not streamed yet comes from it.
    const all = result?.[0] ?? []
    for (let k = prompts[0].length + streamed; k < all.length; k++) if (!stops.has(all[k])) yield all[k]
  }

  /**
   * Writes a Hugging Face checkpoint (config.json, model.safetensors, tokenizer files) that
   * transformers and `fromPretrained` read. Merge adapters first (`await peft.mergeAndUnload()`).
   * `dtype` converts the weights as they are written (default: the model's, float32 after a
   * GGUF load; 'bfloat16' halves the file).
   */
  async savePretrained(dir: string, opts: { dtype?: DType } = {}): Promise<void> {
    if (typeof dir !== 'string' || dir.length === 0) throw new Error(`dir: expected a folder path, found ${String(dir)}`)
    await this.inner.savePretrained(dir, opts.dtype)
  }

  /**
   * Writes the model as one llama.cpp GGUF file, as `convert_hf_to_gguf.py` (f32, f16, bf16,
   * q8_0) or `llama-quantize` (q4_0, q4_k_m: the head in Q6_K, Q4_K_M's per-tensor mix) would,
   * with the tokenizer and chat template in its metadata. Merge adapters first
   * (`(await peft.mergeAndUnload()).saveGguf(path)`); a model with adapters attached is refused.
   */
  async saveGguf(path: string, opts: { outtype?: GgufOuttype } = {}): Promise<void> {
    if (typeof path !== 'string' || path.length === 0) throw new Error(`path: expected a .gguf file path, found ${String(path)}`)
    await this.inner.saveGguf(path, opts.outtype ?? 'f16')
  }

  /** Frees the native weights now. Any later call on this model throws. */
  dispose(): void {
    this.inner.dispose()
  }

  [Symbol.dispose](): void {
    this.dispose()
  }
}

/** Whole-model GGUF types (`LlamaModel.saveGguf`, `peft-node export --format gguf`). */
export const GGUF_OUTTYPES = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_k_m'] as const
export type GgufOuttype = (typeof GGUF_OUTTYPES)[number]

function promptRows(ids: ArrayLike<number> | ArrayLike<number>[], vocab: number): { prompts: number[][]; single: boolean } {
  const single = ids.length > 0 && typeof (ids as ArrayLike<number>)[0] === 'number'
  const rows = single ? [ids as ArrayLike<number>] : (ids as ArrayLike<number>[])
  if (!Array.isArray(rows) || rows.length === 0) throw new Error('ids: expected a prompt (number[]) or prompts (number[][]), found an empty array')
  const prompts = rows.map((r, i) => {
    const a = tokenIdList('ids', r ?? [], vocab, () => ` in prompt ${i}`)
    if (a.length === 0) throw new Error(`ids: prompt ${i} is empty`)
    return a
  })
  return { prompts, single }
}

async function loadAny(path: string, opts: LoadOptions): Promise<LlamaModel> {
  if (typeof path !== 'string' || path.length === 0) throw new Error(`path: expected a folder or .gguf file path, found ${String(path)}`)
  // "cuda"/"cuda:N" loads the opt-in CUDA build (peft-node-linux-x64-gnu-cuda); it is never required otherwise.
  const binding = wantsCuda(opts.device) ? loadNative({ cuda: true }) : native
  // A path that exists locally wins; an `org/name` that does not is fetched from the Hub.
  const local = await resolvePretrained(path, 'model', opts)
  return new LlamaModel(await binding.loadModel(local, opts.dtype, opts.device))
}

/**
 * transformers' `AutoModelForCausalLM`: the architecture is picked from `config.json`'s
 * `model_type` or the GGUF's `general.architecture` (llama, mistral, qwen2, qwen3, phi3, gemma3).
 */
export class AutoModelForCausalLM {
  static fromPretrained(path: string, opts: LoadOptions = {}): Promise<LlamaModel> {
    return loadAny(path, opts)
  }
}
