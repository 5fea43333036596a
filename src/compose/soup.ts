// AdapterSoup (Chronopoulou et al., "AdapterSoup: Weight Averaging to Improve Generalization of
// Pretrained Language Models", Findings of EACL 2023, §2-3): for a new domain, average in weight
// space the adapters trained on the domains closest to it. Closeness here is the paper's
// perplexity-style criterion on a few samples of the new domain: each adapter's loss on them
// (an inference forward, as LoRAHub's); the `topK` with the lowest loss are averaged uniformly
// (`Tuners::add_soup_adapter`: one config, θ = (1/k) Σ θᵢ).
import type { PeftModel } from '../peft'
import { adapterNameArg, adapterNameArgs } from '../inputs'
import { examplesLoss, type LoraHubExample } from './lorahub'
import { peftWarnings } from '../warnings'

export interface AdapterSoupOptions {
  /** Adapters already on the model, of one method and config (a LoRA per domain, say). */
  adapters: string[]
  /** A few tokenized samples of the new domain (`labels` -100 where no loss applies). */
  examples: LoraHubExample[]
  /** How many of the closest adapters to average (default 3, at most `adapters.length`). */
  topK?: number
  /** The soup's name (default 'soup'); it is left active. */
  adapterName?: string
  batchSize?: number
  padTokenId?: number
}

export interface AdapterSoupResult {
  /** The averaged adapters, closest first. */
  selected: string[]
  /** Each adapter's loss on the examples, by name. */
  losses: Record<string, number>
  /** The soup's loss on the examples. */
  loss: number
}

export async function adapterSoup(peft: PeftModel, o: AdapterSoupOptions): Promise<AdapterSoupResult> {
  adapterNameArgs('adapters', o.adapters)
  const name = o.adapterName ?? 'soup'
  adapterNameArg('adapterName', name, { isNew: true })
  const k = o.topK ?? Math.min(3, o.adapters.length)
  if (!Number.isInteger(k) || k < 1 || k > o.adapters.length) {
    throw new Error(`topK: expected an integer in [1, ${o.adapters.length}] (the number of adapters), found ${String(o.topK)}`)
  }
  const losses: Record<string, number> = {}
  for (const a of o.adapters) {
    peft.setAdapter(a)
    losses[a] = await examplesLoss(peft, o.examples, o)
  }
  const selected = [...o.adapters].sort((x, y) => losses[x] - losses[y]).slice(0, k)
  peftWarnings(await peft.baseModel.native.addComposedAdapter('adapter-soup', selected, name))
  peft.setAdapter(name)
  return { selected, losses, loss: await examplesLoss(peft, o.examples, o) }
}
