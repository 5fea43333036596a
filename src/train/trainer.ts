// The training loop: micro-batches -> token-normalised gradients -> clip -> optimizer and
// schedule -> events, metrics, evaluation and checkpoints. Drive it with `await train()` or
// `for await (const s of trainer.steps())`.
import { EventEmitter } from 'node:events'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { PeftModel } from '../peft'
import { AdamW, LRScheduler, clipGradNorm, constantSchedule, cosineSchedule, linearSchedule, type Optimizer } from '../optim'
import { mixSeed } from '../data/prng'
import { resolveOptions, type ResolvedOptions, type TrainerOptions } from './options'
import { BatchStream } from './stream'
import { accumulateGradients } from './accumulate'
import { checkTrainingMemory } from './memory-check'
import { evaluate } from './evaluate'
import { MetricsLog, readMetrics } from './metrics'
import { lossCurveSvg } from './svg'
import * as ckpt from './checkpoint'
import { readOptimizerState } from './optimizer-file'

export interface StepInfo {
  step: number; totalSteps: number; epoch: number; loss: number; lr: number; gradNorm: number; tokens: number; targetTokens: number; tokensPerSecond: number; elapsedMs: number; etaMs: number
  /** Auxiliary loss terms included in `loss` (MixLoRA: `mixlora_balance`), when the method adds any. */
  auxLosses?: Record<string, number>
  /** SoRA: per adapter, the gates still non-zero after this step's proximal step (the kept rank, summed over layers). */
  soraRanks?: Record<string, number>
  /** FAR, LT-SFT, Fish-Dip: per adapter, its mask when a procedure rewrote it at this step (entries or FFN nodes kept, and in all). */
  maskUpdates?: Record<string, { kept: number; total: number }>
  /** PeriodicLoRA: per adapter, the stage that ended at this step (its update unloaded, LoRA restarted). */
  periodicStages?: Record<string, number>
}
export interface EvalInfo { step: number; loss: number; perplexity: number }
export interface SaveInfo { step: number; dir: string }
export interface EndInfo { step: number; reason: 'completed' | 'aborted'; loss: number | null; eval: EvalInfo | null; checkpoint: string | null; adapterDir: string | null }

export class Trainer extends EventEmitter {
  readonly options: ResolvedOptions
  /** Optimizer steps done. */
  step = 0
  readonly stream: BatchStream
  readonly totalSteps: number
  #opt: Optimizer<{ lr: number }, unknown> | null = null
  #sched: LRScheduler | null = null
  #log: MetricsLog | null = null
  #names: string[] = []
  #lastLoss: number | null = null
  #lastEval: EvalInfo | null = null
  #end: EndInfo | null = null

  constructor(readonly model: PeftModel, opts: TrainerOptions) {
    super()
    const tok = model.tokenizer
    this.options = resolveOptions(opts, tok?.padToken?.id ?? tok?.eosToken?.id ?? 0)
    const o = this.options
    this.stream = new BatchStream(o.trainExamples, o)
    const byEpochs = o.epochs === null ? Infinity : Math.ceil((o.epochs * this.stream.batchesPerEpoch) / o.gradientAccumulationSteps)
    this.totalSteps = Math.min(byEpochs, o.maxSteps ?? Infinity)
  }

  get checkpointsDir(): string | null {
    return this.options.output ? join(this.options.output, 'checkpoints') : null
  }

  async train(): Promise<EndInfo> {
    for await (const _ of this.steps());
    return this.#end!
  }

  async *steps(): AsyncGenerator<StepInfo> {
    const o = this.options
    // Aborted already: reject with the signal's reason (an AbortError), as fetch does, rather
    // than run a step and save a checkpoint; an abort during training still stops after a step.
    o.signal?.throwIfAborted()
    await this.#setup()
    const totalMicro = o.epochs === null ? Infinity : o.epochs * this.stream.batchesPerEpoch
    const start = Date.now()
    const first = this.step
    this.model.train()
    if (o.gradientCheckpointing) this.model.gradientCheckpointingEnable()
    while (this.step < this.totalSteps) {
      const t0 = Date.now()
      const n = Math.min(o.gradientAccumulationSteps, totalMicro - this.stream.consumed)
      const micro = Array.from({ length: n }, () => this.stream.next())
      const seeds = micro.map((_, i) => mixSeed(o.seed, this.step, i, 0xd20))
      const lr = this.#sched!.getLastLr()[0]
      const before = await this.model.beforeStep(this.step, micro) // each method's rule before the forward (Fish-Dip's mask)
      const r = await accumulateGradients(this.model, micro, seeds, this.#names)
      const gradNorm = await clipGradNorm(this.model.parameters({ trainableOnly: true }), o.maxGradNorm > 0 ? o.maxGradNorm : Infinity)
      await this.#opt!.step()
      // Each method's rule after the step (AdaLoRA's allocation reads the gradients: before zeroGrad, as PEFT requires).
      const after = await this.model.afterStep({ step: this.step, lr, seed: mixSeed(o.seed, this.step, 0, 0x9e1) })
      this.#opt!.resetState(after.resetState)
      const masks = [...before.maskUpdates, ...after.maskUpdates]
      this.#opt!.zeroGrad()
      this.#sched!.step()
      this.step++
      this.#lastLoss = r.loss
      const now = Date.now()
      const perStep = (now - start) / (this.step - first)
      const info: StepInfo = { step: this.step, totalSteps: this.totalSteps, epoch: this.stream.position.epoch, loss: r.loss, lr, gradNorm, tokens: r.tokens, targetTokens: r.targetTokens, tokensPerSecond: (1000 * r.tokens) / Math.max(1, now - t0), elapsedMs: now - start, etaMs: perStep * (this.totalSteps - this.step) }
      if (Object.keys(r.auxLosses).length > 0) info.auxLosses = r.auxLosses
      if (after.soraRanks.length > 0) info.soraRanks = Object.fromEntries(after.soraRanks.map((k) => [k.adapter, k.kept]))
      if (after.periodicStages.length > 0) info.periodicStages = Object.fromEntries(after.periodicStages.map((p) => [p.adapter, p.stage]))
      if (masks.length > 0) info.maskUpdates = Object.fromEntries(masks.map((k) => [k.adapter, { kept: k.kept, total: k.total }]))
      this.#log?.append({ type: 'train', ...info })
      this.emit('step', info)
      yield info
      if (o.evalEvery > 0 && this.step % o.evalEvery === 0) await this.evaluate()
      const aborted = o.signal?.aborted ?? false
      if ((o.saveEvery > 0 && this.step % o.saveEvery === 0) || (aborted && o.output)) await this.saveCheckpoint()
      if (aborted) return await this.#finish('aborted')
    }
    if (this.#lastEval?.step !== this.step && o.validExamples) await this.evaluate()
    if (o.output && !ckpt.listCheckpoints(this.checkpointsDir!).some((c) => c.step === this.step)) await this.saveCheckpoint()
    await this.#finish('completed')
  }

  /** Loss and perplexity on the validation set (logged and emitted as `eval`). */
  async evaluate(): Promise<EvalInfo> {
    const o = this.options
    if (!o.validExamples) throw new Error('evaluate: no validation set (pass `valid`, or `validSplit` to loadData)')
    const r = await evaluate(this.model, o.validExamples, { batchSize: o.batchSize, maxBatches: o.evalBatches, padTokenId: o.padTokenId })
    this.#lastEval = { step: this.step, loss: r.loss, perplexity: r.perplexity }
    this.#log?.append({ type: 'eval', ...this.#lastEval })
    this.emit('eval', this.#lastEval)
    return this.#lastEval
  }

  async saveCheckpoint(): Promise<string> {
    const root = this.checkpointsDir
    if (!root) throw new Error('saveCheckpoint: no `output` folder was given')
    const state: ckpt.TrainerState = {
      format: ckpt.FORMAT, version: 1, step: this.step, totalSteps: this.totalSteps, position: { ...this.stream.position },
      rng: { seed: this.options.seed, algorithm: 'mulberry32/mix' }, scheduler: this.#sched!.stateDict(),
      model: ckpt.modelFingerprint(this.model), adapter: ckpt.adapterFingerprint(this.model), loss: this.#lastLoss,
    }
    const dir = await ckpt.saveCheckpoint(root, { peft: this.model, optimizer: await this.#opt!.rawStateDict(), state })
    await ckpt.pruneCheckpoints(root, this.options.saveTotalLimit)
    this.emit('save', { step: this.step, dir } satisfies SaveInfo)
    return dir
  }

  async #setup(): Promise<void> {
    const o = this.options
    const params = this.model.namedParameters({ trainableOnly: true })
    if (params.length === 0) throw new Error('Trainer: the model has no trainable parameters (attach an adapter with getPeftModel, or load one with isTrainable: true)')
    this.#names = params.map(([, p]) => p.name)
    if (o.memoryCheck) checkTrainingMemory(this.model, o) // before the optimizer state or any activation exists
    this.#opt = o.optimizer ? o.optimizer(params) : new AdamW(params, { lr: o.learningRate, weightDecay: o.weightDecay })
    this.#opt.zeroGrad()
    const w = { warmupSteps: o.warmupSteps, totalSteps: Number.isFinite(this.totalSteps) ? this.totalSteps : 0 }
    this.#sched = new LRScheduler(this.#opt, o.lrSchedule === 'constant' ? constantSchedule(w) : o.lrSchedule === 'cosine' ? cosineSchedule(w) : linearSchedule(w))
    this.model.checkSchedule(this.totalSteps) // warns where a method's schedule does not fit the run (AdaLoRA's total_step)
    if (o.output) this.#log = new MetricsLog(join(o.output, 'metrics.jsonl'))
    if (o.resumeFromCheckpoint) await this.#resume(o.resumeFromCheckpoint)
  }

  async #resume(path: string): Promise<void> {
    const dir = ckpt.resolveCheckpoint(path)
    const s = ckpt.readTrainerState(dir)
    ckpt.checkCompatible(dir, s, this.model)
    await ckpt.loadAdapterWeights(this.model, join(dir, 'adapter'))
    this.#opt!.loadStateDict(readOptimizerState(dir))
    this.#sched!.loadStateDict(s.scheduler)
    this.step = s.step
    this.stream.position = { ...s.position }
    this.#lastLoss = s.loss
    this.#log?.truncateAfter(s.step)
  }

  async #finish(reason: EndInfo['reason']): Promise<void> {
    const o = this.options
    let adapterDir: string | null = null
    if (o.output) {
      // Every active adapter trained (several: a searched configuration), so every one is saved.
      await this.model.savePretrained(o.output, { selectedAdapters: this.model.activeAdapters })
      adapterDir = o.output
      const recs = readMetrics(join(o.output, 'metrics.jsonl'))
      const pts = (t: string) => recs.filter((r) => r.type === t).map((r) => ({ step: r.step, loss: r.loss as number }))
      await writeFile(join(o.output, 'loss.svg'), lossCurveSvg(pts('train'), pts('eval'), 'peft-node training loss'))
    }
    const last = this.checkpointsDir ? ckpt.listCheckpoints(this.checkpointsDir).at(-1)?.dir ?? null : null
    this.#end = { step: this.step, reason, loss: this.#lastLoss, eval: this.#lastEval, checkpoint: last, adapterDir }
    this.emit('end', this.#end)
  }
}
