// Configuration search (AutoPEFT, Zhou et al. 2023, "AutoPEFT: Automatic Configuration Search for
// Parameter-Efficient Fine-Tuning", TACL): which layers get which method at which size, scored on
// two objectives, validation loss and trainable parameters, under a parameter budget.
//
// AutoPEFT searches with multi-objective Bayesian optimisation; here the strategy is simpler and
// seeded: the first third of the trials are uniform draws from the space (AutoPEFT's own initial
// design is random too), the rest are neighbours (`mutateConfig`) of a point of the current
// Pareto front (half the time its lowest-loss end), which is where a BO acquisition over both
// objectives also looks. Every candidate is built on the model and its trainable parameters
// counted exactly; over the budget it is rejected before any training. Configurations are never
// tried twice.
import { appendFileSync, writeFileSync } from 'node:fs'
import { LlamaModel } from '../model'
import type { PeftModel } from '../peft'
import { loadData } from '../data/dataset'
import { Rng, mixSeed } from '../data/prng'
import { Trainer } from '../train/trainer'
import type { ExamplesLike, TrainerOptions } from '../train/options'
import { layerGroups, mutateConfig, resolveSpace, sampleConfig, configKey, composeAdapters, type SearchConfig, type SearchSpace } from './space'
import { paretoFront } from './pareto'
import { applySearchConfig } from './apply'

/** Trainer options every trial shares (learning rate, batch size, ...). */
export type TrialTrainerOptions = Omit<TrainerOptions, 'train' | 'valid' | 'maxSteps' | 'epochs' | 'seed' | 'signal' | 'output' | 'resumeFromCheckpoint' | 'evalEvery' | 'saveEvery'>

export interface SearchPeftConfigOptions {
  /** The base model, without adapters; it is left without them. */
  model: LlamaModel
  /** `{ train, valid }` tokenized (loadData's result), or a data path: a folder with train.jsonl and valid.jsonl, or one JSONL file (20% held out). */
  data: { train: ExamplesLike; valid: ExamplesLike | null } | string
  /** Most trainable parameters a configuration may have. */
  budget: number
  /** Configurations to train (rejected ones do not count). */
  trials: number
  /** Seeds the search, every adapter's init and the data order (default 0). */
  seed?: number
  /** Optimizer steps per trial (default 20). */
  steps?: number
  space?: SearchSpace
  /** Stops the search after the current step; the interrupted trial is dropped. */
  signal?: AbortSignal
  onTrial?: (t: TrialResult) => void
  /** A JSONL file that each trial (and each rejected candidate) is appended to. */
  log?: string
  trainer?: TrialTrainerOptions
}

export interface TrialResult {
  trial: number
  phase: 'random' | 'refine'
  config: SearchConfig
  params: number
  /** The last step's training loss. */
  trainLoss: number
  valLoss: number
  seconds: number
}

export interface SearchResult {
  trials: TrialResult[]
  /** Non-dominated trials, by increasing parameters. */
  front: TrialResult[]
  /** The trial of lowest validation loss (the front's last), or null when none ran. */
  best: TrialResult | null
  /** Candidates over the budget, built but never trained. */
  rejected: number
  /** 'completed', 'aborted' (the signal), or 'exhausted' (no new configuration fits the budget). */
  reason: 'completed' | 'aborted' | 'exhausted'
}

function positiveInt(name: string, v: unknown): number {
  if (!Number.isInteger(v) || (v as number) < 1) throw new Error(`${name}: expected an integer >= 1, found ${String(v)}`)
  return v as number
}

async function searchData(data: SearchPeftConfigOptions['data'], model: LlamaModel, seed: number): Promise<{ train: ExamplesLike; valid: ExamplesLike }> {
  if (typeof data === 'string') {
    const d = await loadData(data, model.tokenizer, { validSplit: 0.2, seed })
    return { train: d.train, valid: d.valid! }
  }
  if (typeof data !== 'object' || data === null || !('train' in data)) throw new Error('data: expected { train, valid } (loadData\'s result) or a data path')
  if (data.valid == null) throw new Error('data.valid: the search scores configurations on a validation set; none was given (use loadData with validSplit)')
  return { train: data.train, valid: data.valid }
}

/** Trains the active adapters of `peft` for `steps` and scores them; null when the signal stopped it. */
async function trainTrial(peft: PeftModel, data: { train: ExamplesLike; valid: ExamplesLike }, steps: number, seed: number, o: Pick<SearchPeftConfigOptions, 'trainer' | 'signal'>) {
  const trainer = new Trainer(peft, { ...o.trainer, train: data.train, valid: data.valid, maxSteps: steps, seed, signal: o.signal })
  const end = await trainer.train()
  if (end.reason === 'aborted' || !end.eval || end.loss === null) return null
  return { trainLoss: end.loss, valLoss: end.eval.loss }
}

/** Searches adapter configurations of `model` under a parameter budget; see docs/search.md. */
export async function searchPeftConfig(o: SearchPeftConfigOptions): Promise<SearchResult> {
  if (typeof o !== 'object' || o === null) throw new Error('searchPeftConfig: expected an options object')
  if (!(o.model instanceof LlamaModel)) throw new Error('model: expected a LlamaModel (without adapters)')
  const budget = positiveInt('budget', o.budget)
  const trials = positiveInt('trials', o.trials)
  const steps = positiveInt('steps', o.steps ?? 20)
  const seed = o.seed ?? 0
  if (!Number.isInteger(seed) || seed < 0) throw new Error(`seed: expected an integer >= 0, found ${String(seed)}`)
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new Error('signal: expected an AbortSignal')
  if (o.onTrial !== undefined && typeof o.onTrial !== 'function') throw new Error('onTrial: expected a function')
  if (o.log !== undefined && (typeof o.log !== 'string' || o.log === '')) throw new Error(`log: expected a file path, found ${String(o.log)}`)
  const space = resolveSpace(o.space, o.model.config.num_hidden_layers)
  o.signal?.throwIfAborted()
  const data = await searchData(o.data, o.model, seed)
  if (o.log) writeFileSync(o.log, '', { flag: 'a' }) // a bad path fails now, not after the first trial
  const log = (record: Record<string, unknown>) => o.log && appendFileSync(o.log, JSON.stringify(record) + '\n')

  const layers = layerGroups(o.model.config.num_hidden_layers, space.groups)
  const rng = new Rng(mixSeed(seed, 0x5ea7c4))
  const randomTrials = Math.ceil(trials / 3)
  const tried = new Set<string>()
  const results: TrialResult[] = []
  let rejected = 0
  let reason: SearchResult['reason'] = 'completed'
  // Draws that repeat a configuration or fit no budget cost little; this many in a row end the search.
  for (let misses = 0; results.length < trials; ) {
    if (misses > 200) {
      reason = 'exhausted'
      break
    }
    const front = paretoFront(results)
    const phase = results.length < randomTrials || front.length === 0 ? 'random' : 'refine'
    // Half the refinements start from the front's lowest-loss end (where the budget is spent), half from anywhere on it.
    const parent = rng.next() < 0.5 ? front.at(-1)! : front[rng.int(front.length)]
    const config = phase === 'random' ? sampleConfig(space, layers, rng) : mutateConfig(parent.config, space, rng)
    const key = configKey(config)
    if (tried.has(key) || composeAdapters(config).length === 0) {
      misses++
      continue
    }
    tried.add(key)
    if (o.signal?.aborted) {
      reason = 'aborted'
      break
    }
    const t0 = Date.now()
    const peft = await applySearchConfig(o.model, config, { seed })
    try {
      const params = peft.trainableParameterCounts().trainable
      if (params > budget) {
        rejected++
        misses++
        log({ type: 'rejected', phase, config, params, budget })
        continue
      }
      misses = 0
      const r = await trainTrial(peft, data, steps, seed, o)
      if (!r) {
        reason = 'aborted'
        break
      }
      const trial: TrialResult = { trial: results.length, phase, config, params, ...r, seconds: (Date.now() - t0) / 1000 }
      results.push(trial)
      log({ type: 'trial', ...trial })
      o.onTrial?.(trial)
    } finally {
      peft.unload()
    }
  }
  const front = paretoFront(results)
  return { trials: results, front, best: front.at(-1) ?? null, rejected, reason }
}

/** Trains one configuration as a search trial would (same steps, seed and trainer options): baselines such as uniform LoRA. */
export async function evaluateSearchConfig(o: Omit<SearchPeftConfigOptions, 'budget' | 'trials' | 'space' | 'onTrial' | 'log'> & { config: SearchConfig }): Promise<{ params: number; trainLoss: number; valLoss: number } | null> {
  if (!(o.model instanceof LlamaModel)) throw new Error('model: expected a LlamaModel (without adapters)')
  const seed = o.seed ?? 0
  const data = await searchData(o.data, o.model, seed)
  const peft = await applySearchConfig(o.model, o.config, { seed })
  try {
    const params = peft.trainableParameterCounts().trainable
    const r = await trainTrial(peft, data, positiveInt('steps', o.steps ?? 20), seed, o)
    return r && { params, ...r }
  } finally {
    peft.unload()
  }
}
