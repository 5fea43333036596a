import { LlamaModel, type ForwardInput, type ForwardOutput, type LossOutput } from './model'
import { Parameter } from './parameter'
import type { GenerateOptions } from './generation'
import { PeftConfig, RawPeftConfig } from './methods/config'
import { addWeightedAdapter, type WeightedAdapterOptions } from './compose/weighted'
import { adapterNameArg, adapterNameArgs, flatBatches, intArg, seedArg } from './inputs'
import type { FisherBatch } from './methods/sparse'
import { resolvePretrained } from './hub/resolve'
import type { HubOptions } from './hub/settings'
import type { IdRows } from './inputs'
import { fitLaplace, laplacePredict, loadLaplace, type LaplaceBatch, type LaplaceFitOptions, type LaplacePosterior, type LaplacePredictOptions, type LaplacePrediction } from './laplace'
import { peftWarnings, type PeftWarning } from './warnings'
import { nativeStepContext, stepReport, type KeptCount, type StepContext, type StepReport } from './steps'

export interface PeftModelOptions {
  adapterName?: string
  /** Seeds the adapter's random init (default 0, so runs are reproducible). */
  seed?: number
  /**
   * Emit the adapter's warnings (unknown config fields, ...) as process warnings (default true);
   * false leaves them in `peft.warningDetails` only, for callers that report them their own way.
   */
  warn?: boolean
}

/** With a Hub repo id (`user/adapter`) for the folder, the `HubOptions` apply (revision, token, ...). */
export interface LoadAdapterOptions extends Omit<HubOptions, 'file'> {
  adapterName?: string
  /** Load for training (default false: frozen, as PEFT's `is_trainable=False`). */
  isTrainable?: boolean
}

/** Wraps a model whose layers carry adapters; forward, generate and stream apply them. */
export class PeftModel {
  #unloaded = false
  /** Warnings from the last injection or load, with their `code` and `field` (unknown config fields, ...). */
  warningDetails: PeftWarning[] = []

  /** The messages of `warningDetails`. */
  get warnings(): string[] {
    return this.warningDetails.map((w) => w.message)
  }

  /** @internal */
  constructor(private readonly model: LlamaModel) {}

  /** Loads a PEFT adapter folder onto `model`, as `PeftModel.from_pretrained`; an mlx-lm adapter folder (adapters.safetensors) is converted. */
  static async fromPretrained(model: LlamaModel, dir: string, opts: LoadAdapterOptions = {}): Promise<PeftModel> {
    const name = adapterNameArg('adapterName', opts.adapterName ?? 'default', { isNew: true })
    const peft = new PeftModel(model)
    await peft.loadAdapter(dir, name, { ...opts, isTrainable: opts.isTrainable ?? false })
    return peft
  }

  private get native() {
    if (this.#unloaded) throw new Error('this PeftModel was unloaded (mergeAndUnload/unload); use the LlamaModel it returned')
    return this.model.native
  }

  /** The underlying model (its layers carry the adapters). */
  get baseModel(): LlamaModel {
    return this.model
  }

  get tokenizer() {
    return this.model.tokenizer
  }

  get config() {
    return this.model.config
  }

  /** Adds an adapter (a PEFT folder, or an mlx-lm one, converted); the first one becomes active, later ones wait for `setAdapter`. */
  async addAdapter(name: string, config: PeftConfig, opts: { seed?: number; warn?: boolean } = {}): Promise<void> {
    adapterNameArg('name', name, { isNew: true })
    if (!(config instanceof PeftConfig)) throw new Error('config: expected a method config such as `new LoraConfig({...})`')
    const seed = seedArg('seed', opts.seed ?? 0)
    const added = await (config.addTo(this.native, name, seed) ?? this.native.addAdapter(name, JSON.stringify(config.toJSON()), seed))
    this.warningDetails = peftWarnings(added, opts.warn ?? true)
  }

  /**
   * Adds adapter `name`, the combination of the LoRA adapters `adapters` with `weights`
   * (PEFT's `add_weighted_adapter`; `compose/weighted.ts`). It is added inactive and frozen.
   */
  async addWeightedAdapter(adapters: string[], weights: number[], name: string, opts: WeightedAdapterOptions = {}): Promise<void> {
    adapterNameArgs('adapters', adapters)
    adapterNameArg('name', name, { isNew: true })
    this.warningDetails = peftWarnings(await addWeightedAdapter(this.native, adapters, weights, name, opts))
  }

  /**
   * Adds adapter `name` built by `method` over the trained adapters `adapters`, which it copies
   * and keeps frozen: 'adapter-fusion' (AdapterFusion over serial bottleneck adapters) or 'mole'
   * (MoLE: learned gates over LoRA adapters of one rank on the same modules); or 'adapter-soup',
   * their uniform weight average (`adapterSoup` in compose/soup.ts selects the adapters).
   * It is added inactive; `setAdapter(name)` trains its own parameters.
   */
  async addComposedAdapter(method: 'adapter-fusion' | 'mole' | 'adapter-soup', adapters: string[], name: string): Promise<void> {
    if (typeof method !== 'string') throw new Error(`method: expected "adapter-fusion", "mole" or "adapter-soup", found ${String(method)}`)
    adapterNameArgs('adapters', adapters)
    adapterNameArg('name', name, { isNew: true })
    this.warningDetails = peftWarnings(await this.native.addComposedAdapter(method, adapters, name))
  }

  /** Loads an adapter folder, or a Hub repo id (`user/adapter`) fetched into the Hugging Face cache. */
  async loadAdapter(dir: string, name: string, opts: { isTrainable?: boolean } & Omit<HubOptions, 'file'> = {}): Promise<void> {
    adapterNameArg('name', name, { isNew: true })
    const local = await resolvePretrained(dir, 'adapter', opts)
    this.warningDetails = peftWarnings(await this.native.loadAdapter(local, name, opts.isTrainable ?? false))
  }

  /** Writes `adapter_config.json` and `adapter_model.safetensors` exactly as PEFT does. */
  async savePretrained(dir: string, opts: { selectedAdapters?: string[] } = {}): Promise<void> {
    await this.native.saveAdapters(dir, adapterNameArgs('selectedAdapters', opts.selectedAdapters))
  }

  /**
   * Writes an adapter as a llama.cpp LoRA GGUF (what `convert_lora_to_gguf.py` writes), to load
   * next to the base GGUF in llama.cpp, node-llama-cpp, Ollama or LM Studio. LoRA only (rsLoRA and
   * rank/alpha patterns are folded in exactly); other methods are refused with a hint to export
   * the merged model instead.
   */
  async saveGguf(path: string, opts: { outtype?: 'f32' | 'f16' | 'bf16' | 'q8_0'; adapterName?: string } = {}): Promise<void> {
    if (typeof path !== 'string' || path.length === 0) throw new Error(`path: expected a .gguf file path, found ${String(path)}`)
    const name = opts.adapterName ?? this.activeAdapter
    adapterNameArg('adapterName', name)
    await this.native.saveLoraGguf(path, name, opts.outtype ?? 'f16')
  }

  /**
   * Writes an adapter as mlx-lm's adapter folder (`adapters.safetensors` + `adapter_config.json`,
   * what `mlx_lm.generate --adapter-path` loads). LoRA/DoRA with one rank and scale on the same
   * modules of the last N layers; anything else is refused with the alternative (merging).
   */
  async saveMlx(dir: string, opts: { adapterName?: string } = {}): Promise<void> {
    if (typeof dir !== 'string' || dir.length === 0) throw new Error(`dir: expected a folder path, found ${String(dir)}`)
    const name = opts.adapterName ?? this.activeAdapter
    adapterNameArg('adapterName', name)
    await this.native.saveMlxAdapter(dir, name)
  }

  get adapterNames(): string[] {
    return this.native.adapterNames()
  }

  get activeAdapters(): string[] {
    return this.native.activeAdapters()
  }

  get activeAdapter(): string {
    return this.activeAdapters[0]
  }

  /** Each adapter's config, as PEFT's `peft_config` (snake_case JSON). */
  get peftConfig(): Record<string, Record<string, unknown>> {
    return Object.fromEntries(this.adapterNames.map((n) => [n, JSON.parse(this.native.adapterConfigJson(n))]))
  }

  /** The config of an adapter as a config object. */
  adapterConfig(name = this.activeAdapter): PeftConfig {
    return new RawPeftConfig(JSON.parse(this.native.adapterConfigJson(adapterNameArg('name', name))) as Record<string, unknown>)
  }

  /** Module paths the adapter is attached to. */
  targetedModules(name = this.activeAdapter): string[] {
    return this.native.adapterModules(adapterNameArg('name', name))
  }

  setAdapter(name: string | string[]): void {
    this.native.setActiveAdapters(Array.isArray(name) ? adapterNameArgs('name', name)! : [adapterNameArg('name', name)])
  }

  deleteAdapter(name: string): void {
    peftWarnings(this.native.deleteAdapter(adapterNameArg('name', name)))
  }

  disableAdapters(): void {
    this.native.setAdaptersEnabled(false)
  }

  enableAdapters(): void {
    this.native.setAdaptersEnabled(true)
  }

  /** Runs `fn` with the adapters switched off (PEFT's `with model.disable_adapter():`). */
  async withAdaptersDisabled<T>(fn: () => Promise<T>): Promise<T> {
    this.disableAdapters()
    try {
      return await fn()
    } finally {
      this.enableAdapters()
    }
  }

  mergeAdapter(names?: string[]): void {
    this.native.mergeAdapters(adapterNameArgs('names', names))
  }

  unmergeAdapter(): void {
    this.native.unmergeAdapters()
  }

  /** Merges the adapters into the base weights, removes them, and returns the base model. */
  async mergeAndUnload(opts: { adapterNames?: string[] } = {}): Promise<LlamaModel> {
    // Off the JS thread (it rewrites every targeted weight); PEFT's method returns the model, this one a Promise of it.
    await this.native.mergeAndUnload(adapterNameArgs('adapterNames', opts.adapterNames))
    this.#unloaded = true
    return this.model
  }

  /** Removes every adapter without merging and returns the base model. */
  unload(): LlamaModel {
    this.native.unload()
    this.#unloaded = true
    return this.model
  }

  train(): this {
    this.native.setTraining(true)
    return this
  }

  eval(): this {
    this.native.setTraining(false)
    return this
  }

  /**
   * The auxiliary loss terms of the last training forward, by name (MixLoRA's load-balancing
   * loss is `mixlora_balance`). They are already part of that forward's loss; empty when the
   * adapters add none.
   */
  auxLosses(): Record<string, number> {
    return this.native.auxLosses()
  }

  /**
   * DyLoRA: the rank adapter `adapterName` runs at outside training (evaluation, generation,
   * merging), any in [rMin, r]; it becomes the config's `eval_rank`, so saving keeps it.
   * Refused while the adapter is merged.
   */
  setDyLoraRank(rank: number, adapterName = this.activeAdapter): void {
    this.native.setDyloraRank(adapterNameArg('adapterName', adapterName), intArg('rank', rank, 1))
  }

  /** `input.adapterNames` runs each row with its own adapter (any loaded one, or "__base__"), as PEFT's `adapter_names`. */
  forward(input: ForwardInput & { returnLogits: false }): Promise<LossOutput>
  forward(input: ForwardInput): Promise<ForwardOutput>
  forward(input: ForwardInput): Promise<ForwardOutput | LossOutput> {
    void this.native
    return this.model.forward(input)
  }

  /** transformers' `gradient_checkpointing_enable()` on the base model (see `LlamaModel`). */
  gradientCheckpointingEnable(): void {
    void this.native
    this.model.gradientCheckpointingEnable()
  }

  gradientCheckpointingDisable(): void {
    void this.native
    this.model.gradientCheckpointingDisable()
  }

  get isGradientCheckpointing(): boolean {
    return this.model.isGradientCheckpointing
  }

  /** `opts.adapterNames` generates each prompt with its own adapter (mixed batch), as PEFT's `adapter_names`. */
  generate(ids: ArrayLike<number>, opts?: GenerateOptions): Promise<number[]>
  generate(ids: ArrayLike<number>[], opts?: GenerateOptions): Promise<number[][]>
  generate(ids: ArrayLike<number> | ArrayLike<number>[], opts?: GenerateOptions): Promise<number[] | number[][]> {
    void this.native
    return this.model.generate(ids as ArrayLike<number>[], opts)
  }

  stream(ids: ArrayLike<number>, opts?: GenerateOptions): AsyncGenerator<number> {
    void this.native
    return this.model.stream(ids, opts)
  }

  /**
   * Parameters named as PEFT's `named_parameters()`: `base_model.model.` before every name,
   * and `.base_layer` inside the paths of wrapped modules; prompt-learning tensors are
   * `prompt_encoder.<adapter>.…`, as PEFT names them.
   */
  namedParameters(opts: { trainableOnly?: boolean } = {}): [string, Parameter][] {
    const out: [string, Parameter][] = []
    for (const info of this.native.parameters()) {
      if (opts.trainableOnly && !info.requiresGrad) continue
      const p = new Parameter(this.native, info.name, info.shape, info.storage ?? null)
      out.push([info.peftName, p])
    }
    return out
  }

  parameters(opts: { trainableOnly?: boolean } = {}): Parameter[] {
    return this.namedParameters(opts).map(([, p]) => p)
  }

  /** Counts as PEFT's `get_nb_trainable_parameters`. */
  trainableParameterCounts(): { trainable: number; all: number } {
    let trainable = 0
    let all = 0
    for (const info of this.native.parameters()) {
      const n = info.shape.reduce((a, b) => a * b, 1)
      all += n
      if (info.requiresGrad) trainable += n
    }
    return { trainable, all }
  }

  /** Prints, in PEFT's format: `trainable params: 1,024 || all params: 5,048 || trainable%: 20.2853`. */
  printTrainableParameters(log: (line: string) => void = console.log): string {
    const { trainable, all } = this.trainableParameterCounts()
    const fmt = (n: number) => n.toLocaleString('en-US')
    const line = `trainable params: ${fmt(trainable)} || all params: ${fmt(all)} || trainable%: ${((100 * trainable) / all).toFixed(4)}`
    log(line)
    return line
  }

  zeroGrad(): void {
    this.model.zeroGrad()
  }

  /**
   * AdaLoRA's rank allocation, as PEFT's `model.base_model.update_and_allocate(global_step)`:
   * call it every step after `optimizer.step()` and before `zeroGrad()` (it scores ranks by
   * |weight · gradient|), with the 0-based step. Resolves to the rank budget applied at
   * this step, or null. The allocation is kept as the adapter's `rank_pattern` (saved with it).
   * `afterStep` runs it (with every other method's rule), and the Trainer calls `afterStep`.
   */
  updateAndAllocate(globalStep: number): Promise<number | null> {
    if (!Number.isSafeInteger(globalStep) || globalStep < 0) throw new Error(`updateAndAllocate: globalStep: expected an integer >= 0, found ${globalStep}`)
    return this.native.updateAndAllocate(globalStep)
  }

  /**
   * Every active method's rule after an optimizer step, whatever the methods are: call it after
   * `optimizer.step()` and before `zeroGrad()` (AdaLoRA's allocation reads the gradients), then
   * reset the optimizer state of `resetState`. It runs, for the active adapters that have one,
   * AdaLoRA's `updateAndAllocate`, SoRA's proximal step, PeriodicLoRA's restart, FAR's node
   * selection and LT-SFT's lottery step, in that order; for other methods it does nothing.
   * The Trainer calls it after each step.
   */
  afterStep(ctx: StepContext): Promise<StepReport> {
    return this.native.afterStep(nativeStepContext(ctx)).then(stepReport)
  }

  /**
   * Every active method's rule before the forward of step `step` (0-based), given the step's
   * batches: Fish-Dip's mask update (every `updateEvery` steps, from the Fisher scores on
   * `batches`); nothing for other methods. The Trainer calls it before each step.
   */
  beforeStep(step: number, batches: FisherBatch[]): Promise<StepReport> {
    if (!Number.isSafeInteger(step) || step < 0) throw new Error(`beforeStep: step: expected an integer >= 0, found ${step}`)
    return this.native.beforeStep(step, flatBatches(batches, this.model.config.vocab_size)).then(stepReport)
  }

  /**
   * Warnings about the active methods' schedules for a run of `totalSteps` optimizer steps
   * (AdaLoRA: a `total_step` other than `totalSteps`), emitted as process warnings unless
   * `emit` is false. The Trainer calls it before training.
   */
  checkSchedule(totalSteps: number, emit = true): PeftWarning[] {
    if (!Number.isSafeInteger(totalSteps) || totalSteps < 0) throw new Error(`checkSchedule: totalSteps: expected an integer >= 0, found ${totalSteps}`)
    return peftWarnings(this.native.checkSchedule(totalSteps), emit)
  }

  /**
   * SoRA's proximal step alone (gates soft-thresholded by `lr` · sparseLambda); each adapter's gates kept.
   * @deprecated `afterStep({ step, lr })` runs it with every other method's rule.
   */
  soraProximalStep(lr: number): KeptCount[] {
    if (!(Number.isFinite(lr) && lr >= 0)) throw new Error(`soraProximalStep: lr: expected a finite number >= 0, found ${lr}`)
    return this.native.soraProximalStep(lr)
  }

  /**
   * FAR's node selection and LT-SFT's lottery step alone, after `stepsDone` steps; each adapter changed.
   * @deprecated `afterStep({ step: stepsDone - 1, lr })` runs them with every other method's rule.
   */
  maskProcedureStep(stepsDone: number): KeptCount[] {
    if (!Number.isSafeInteger(stepsDone) || stepsDone < 0) throw new Error(`maskProcedureStep: stepsDone: expected an integer >= 0, found ${stepsDone}`)
    return this.native.maskProcedureStep(stepsDone)
  }

  /**
   * Fish-Dip's mask update alone, before step `step` (0-based) when due; each adapter updated.
   * @deprecated `beforeStep(step, batches)` runs it (off the JS thread).
   */
  fishDipUpdate(step: number, batches: FisherBatch[]): KeptCount[] {
    if (!Number.isSafeInteger(step) || step < 0) throw new Error(`fishDipUpdate: step: expected an integer >= 0, found ${step}`)
    return this.native.fishDipUpdate(step, flatBatches(batches, this.model.config.vocab_size))
  }

  /**
   * PeriodicLoRA's restart alone, after `stepsDone` steps; each adapter restarted, its stage and the parameters redrawn.
   * @deprecated `afterStep({ step: stepsDone - 1, lr, seed })` runs it with every other method's rule.
   */
  periodicLoraRestart(stepsDone: number, seed = 0): { adapter: string; stage: number; reset: string[] }[] {
    if (!Number.isSafeInteger(stepsDone) || stepsDone < 0) throw new Error(`periodicLoraRestart: stepsDone: expected an integer >= 0, found ${stepsDone}`)
    return this.native.periodicLoraRestart(stepsDone, seedArg('seed', seed))
  }

  dispose(): void {
    this.model.dispose()
  }

  // Laplace-LoRA (issue 16; src/laplace.ts): a posterior over a trained LoRA adapter.
  /** Fits Laplace-LoRA over the active (or the named) LoRA adapter on `batches`; see `fitLaplace`. */
  fitLaplace(batches: LaplaceBatch[], opts?: LaplaceFitOptions): Promise<LaplacePosterior> {
    return fitLaplace(this, batches, opts)
  }

  /** Loads a posterior saved by `LaplacePosterior.save` (e.g. in the adapter's folder). */
  loadLaplace(dir: string, opts?: { adapterName?: string }): LaplacePosterior {
    return loadLaplace(this, dir, opts)
  }

  /** Predictive next-token probabilities under the active adapter's Laplace posterior. */
  laplacePredict(inputIds: IdRows, opts?: LaplacePredictOptions): Promise<LaplacePrediction> {
    return laplacePredict(this, inputIds, opts)
  }
}

/** Attaches a new adapter to `model` (modified in place) and returns the PEFT wrapper. */
export async function getPeftModel(model: LlamaModel, config: PeftConfig, opts: PeftModelOptions = {}): Promise<PeftModel> {
  if (!(model instanceof LlamaModel)) throw new Error('model: expected a LlamaModel')
  const name = adapterNameArg('adapterName', opts.adapterName ?? 'default', { isNew: true })
  const peft = new PeftModel(model)
  await peft.addAdapter(name, config, { seed: opts.seed, warn: opts.warn })
  return peft
}
