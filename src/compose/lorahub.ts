// LoRAHub (Huang et al., "LoraHub: Efficient Cross-Task Generalization via Dynamic LoRA
// Composition", COLM 2024, arXiv 2307.13269): given LoRA modules trained on other tasks
// and a few examples of a new task, find weights w without gradients. The composed module
// is A = Σ wᵢAᵢ, B = Σ wᵢBᵢ (eq. 2; the official `get_final_weights` sums the state
// dicts), and the search minimises  loss(examples) + α Σ|wᵢ|  (eq. 3, α = 0.05, on the
// sum as the paper writes it; the official code divides it by the number of modules) over
// wᵢ ∈ [-1.5, 1.5], starting at w = 0 with a budget of 40 evaluations, as the paper's nevergrad setup. The optimiser
// here is our CMA-ES (`cmaes.ts`); every loss is an inference forward (no graph).
import type { PeftModel } from '../peft'
import { collate } from '../data/batches'
import { targetCount } from '../data/tokenize'
import { cmaes } from './cmaes'
import { adapterNameArg, adapterNameArgs, nativeBatch } from '../inputs'
import { peftWarnings } from '../warnings'

export interface LoraHubExample {
  inputIds: number[]
  /** Token ids where the loss applies, -100 elsewhere (as the data pipeline makes them). */
  labels: number[]
}

export interface LoraHubOptions {
  /** Names of LoRA adapters already on the model, all on the same modules with one rank. */
  adapters: string[]
  examples: LoraHubExample[]
  /** Loss evaluations (default 40, the paper's). */
  maxSteps?: number
  /** Seeds the search (default 0). */
  seed?: number
  /** The composed adapter's name (default 'lorahub'); it is left active. */
  adapterName?: string
  /** The L1 coefficient α (default 0.05). */
  l1?: number
  /** Weights are searched in [-bound, bound] (default 1.5). */
  bound?: number
  /** CMA-ES's initial step size (default 0.5). */
  sigma0?: number
  batchSize?: number
  padTokenId?: number
}

export interface LoraHubResult {
  weights: number[]
  /** The loss on the examples at `weights` (without the L1 term). */
  loss: number
  /** loss + α Σ|w|. */
  objective: number
  evaluations: number
}

/** Sets adapter `name` to the element-wise composition of `adapters` with `weights`. */
export async function composeLoraHub(peft: PeftModel, adapters: string[], weights: number[], name: string): Promise<void> {
  adapterNameArgs('adapters', adapters)
  adapterNameArg('name', name)
  peftWarnings(await peft.baseModel.native.composeLorahub(adapters, weights, name))
}

/** The token-weighted mean loss of `examples` with the active adapters, in inference mode. */
export async function examplesLoss(peft: PeftModel, examples: LoraHubExample[], o: { batchSize?: number; padTokenId?: number } = {}): Promise<number> {
  const usable = examples.filter((e) => targetCount(e.labels) > 0)
  if (usable.length === 0) throw new Error('examples: expected at least one example with a label that is not -100')
  const native = peft.baseModel.native
  const bs = o.batchSize ?? 8
  let sum = 0
  let count = 0
  for (let s = 0; s < usable.length; s += bs) {
    const b = collate(usable.slice(s, s + bs).map((e) => ({ ...e, where: 'lorahub' })), o.padTokenId ?? 0)
    // Checked like forward's inputs: ids out of the vocabulary would wrap into it natively.
    const loss = await native.inferenceLoss(nativeBatch('examples ', b, peft.config.vocab_size))
    sum += loss * b.targetTokens
    count += b.targetTokens
  }
  return sum / count
}

export async function loraHub(peft: PeftModel, o: LoraHubOptions): Promise<LoraHubResult> {
  const { adapters, examples } = o
  if (!Array.isArray(adapters) || adapters.length === 0) throw new Error('adapters: expected at least one LoRA adapter name')
  if (!Array.isArray(examples) || examples.length === 0) throw new Error('examples: expected at least one example')
  const name = o.adapterName ?? 'lorahub'
  const l1 = o.l1 ?? 0.05
  const bound = o.bound ?? 1.5
  const budget = o.maxSteps ?? 40
  const sigma0 = o.sigma0 ?? 0.5
  if (!(bound > 0) || !Number.isFinite(bound)) throw new Error(`bound: expected a finite number > 0, found ${String(bound)}`)
  if (!(sigma0 > 0) || !Number.isFinite(sigma0)) throw new Error(`sigma0: expected a finite number > 0, found ${String(sigma0)}`)
  if (!(l1 >= 0) || !Number.isFinite(l1)) throw new Error(`l1: expected a finite number >= 0, found ${String(l1)}`)
  if (!Number.isInteger(budget) || budget < 1) throw new Error(`maxSteps: expected a positive integer, found ${String(budget)}`)
  const objective = async (w: number[]) => {
    await composeLoraHub(peft, adapters, w, name)
    if (peft.activeAdapters.join() !== name) peft.setAdapter(name)
    const loss = await examplesLoss(peft, examples, o)
    return loss + l1 * w.reduce((s, x) => s + Math.abs(x), 0)
  }
  const found = await cmaes(objective, {
    x0: adapters.map(() => 0),
    sigma0,
    lower: -bound,
    upper: bound,
    budget,
    seed: o.seed ?? 0,
  })
  await composeLoraHub(peft, adapters, found.best, name)
  const loss = found.bestValue - l1 * found.best.reduce((s, x) => s + Math.abs(x), 0)
  return { weights: found.best, loss, objective: found.bestValue, evaluations: found.evaluations }
}
