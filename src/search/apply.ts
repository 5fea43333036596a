// A searched configuration on a model: its adapters added and all active at once (their outputs
// add up, as PEFT's multiple active adapters), so one Trainer trains them together.
import { LlamaModel } from '../model'
import { getPeftModel, type PeftModel } from '../peft'
import { mixSeed } from '../data/prng'
import { GROUP_METHODS, composeAdapters, type SearchConfig } from './space'

/**
 * Attaches the adapters of `config` (from `searchPeftConfig`'s `best`, or a `best.json`) to
 * `model` and activates them all; train the result with the Trainer. `peft.unload()` removes them.
 */
export async function applySearchConfig(model: LlamaModel, config: SearchConfig, opts: { seed?: number } = {}): Promise<PeftModel> {
  if (!(model instanceof LlamaModel)) throw new Error('model: expected a LlamaModel')
  const adapters = composeAdapters(checkSearchConfig(config, 'config', model.config.num_hidden_layers))
  if (adapters.length === 0) throw new Error('config: every group is `none` and there is no prefix: nothing to train')
  const seed = opts.seed ?? 0
  const [first, ...rest] = adapters
  const peft = await getPeftModel(model, first.config, { adapterName: first.name, seed, warn: false })
  try {
    for (const [i, a] of rest.entries()) await peft.addAdapter(a.name, a.config, { seed: mixSeed(seed, i + 1), warn: false })
    peft.setAdapter(adapters.map((a) => a.name))
  } catch (e) {
    peft.unload()
    throw e
  }
  return peft
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

/** Checks a configuration (as read from JSON) against a model of `numLayers` layers; errors name the field. */
export function checkSearchConfig(value: unknown, where: string, numLayers: number): SearchConfig {
  if (!isObject(value)) throw new Error(`${where}: expected a search configuration { groups, prefixLength, loraTargets }, found ${JSON.stringify(value)}`)
  const { groups, prefixLength, loraTargets } = value
  if (!Array.isArray(groups)) throw new Error(`${where}.groups: expected a list of { layers, method, size }`)
  const seen = new Set<number>()
  groups.forEach((g: unknown, i) => {
    const at = `${where}.groups[${i}]`
    if (!isObject(g)) throw new Error(`${at}: expected { layers, method, size }`)
    if (!GROUP_METHODS.includes(g.method as never)) throw new Error(`${at}.method: expected one of ${GROUP_METHODS.join(', ')}, found ${JSON.stringify(g.method)}`)
    const sized = g.method === 'lora' || g.method === 'bottleneck'
    if (!Number.isInteger(g.size) || (g.size as number) < (sized ? 1 : 0)) throw new Error(`${at}.size: expected an integer >= ${sized ? 1 : 0}, found ${JSON.stringify(g.size)}`)
    const layers = g.layers
    if (!Array.isArray(layers) || layers.length === 0) throw new Error(`${at}.layers: expected a non-empty list of layer indices`)
    for (const l of layers) {
      if (!Number.isInteger(l) || l < 0 || l >= numLayers) throw new Error(`${at}.layers: expected layer indices in [0, ${numLayers - 1}], found ${JSON.stringify(l)}`)
      if (seen.has(l)) throw new Error(`${at}.layers: layer ${l} is in two groups`)
      seen.add(l)
    }
  })
  if (!Number.isInteger(prefixLength) || (prefixLength as number) < 0) throw new Error(`${where}.prefixLength: expected an integer >= 0, found ${JSON.stringify(prefixLength)}`)
  if (!Array.isArray(loraTargets) || loraTargets.length === 0 || loraTargets.some((t) => typeof t !== 'string' || t === '')) {
    throw new Error(`${where}.loraTargets: expected a non-empty list of module names, found ${JSON.stringify(loraTargets)}`)
  }
  return value as unknown as SearchConfig
}
