// The search space of `searchPeftConfig`: which layer groups get which method at which size,
// plus a global prefix. After AutoPEFT (Zhou et al. 2023, §3: per-layer adapter placement, serial
// adapter size, prefix length) and S4 (Chen et al. 2023, "Parameter-Efficient Fine-Tuning Design
// Spaces": layer grouping, a strategy per group, per-group dimensions).
//
// Kept from AutoPEFT: the per-layer on/off choice (a group may be `none`), the serial (bottleneck)
// adapter and its size, the prefix length (0 = no prefix, as AutoPEFT's "off"). Kept from S4:
// contiguous layer groups with one method each, and LoRA and (IA)³ among the strategies. Not
// kept: AutoPEFT's parallel adapter (our serial one covers the adapter branch) and S4's BitFit
// and its spindle grouping (groups here are equal-sized blocks); LoRA targets and IA³ modules
// are fixed for the whole search (`loraTargets`; PEFT's IA³ defaults).
import type { PeftConfig } from '../methods/config'
import { LoraConfig } from '../methods/lora'
import { BottleneckAdapterConfig } from '../methods/adapters'
import { IA3Config } from '../methods/ia3'
import { PrefixTuningConfig } from '../methods/prompt'
import type { Rng } from '../data/prng'

export const GROUP_METHODS = ['none', 'lora', 'bottleneck', 'ia3'] as const
export type GroupMethod = (typeof GROUP_METHODS)[number]

export interface SearchSpace {
  /** Contiguous blocks of decoder layers, each with one method (default: one per layer, at most 4). */
  groups?: number
  /** The methods a group may take (default all of `none`, `lora`, `bottleneck`, `ia3`). */
  methods?: GroupMethod[]
  /** LoRA ranks to choose from (default 1, 2, 4, 8, 16); alpha is 2r, as the CLI's LoRA. */
  loraRanks?: number[]
  /** Bottleneck sizes of the serial adapter (default 1, 2, 4, 8, 16, 32). */
  bottleneckSizes?: number[]
  /** Prefix lengths; 0 is no prefix (default 0, 1, 2, 4, 8, 16). */
  prefixLengths?: number[]
  /** The modules LoRA adapts in a LoRA group (default q_proj, v_proj). */
  loraTargets?: string[]
}

export type ResolvedSpace = Required<SearchSpace>

/** One point of the space: JSON, and what `applySearchConfig` builds. */
export interface SearchConfig {
  /** `size` is the LoRA rank or the bottleneck size; 0 for `none` and `ia3`. */
  groups: { layers: number[]; method: GroupMethod; size: number }[]
  /** Prefix tuning's virtual tokens in every layer; 0: none. */
  prefixLength: number
  /** The modules LoRA adapts in LoRA groups. */
  loraTargets: string[]
}

function sizes(name: string, v: unknown, fallback: number[], allowZero = false): number[] {
  if (v === undefined) return fallback
  const ok = Array.isArray(v) && v.length > 0 && v.every((x) => Number.isInteger(x) && x >= (allowZero ? 0 : 1))
  if (!ok) throw new Error(`space.${name}: expected a non-empty list of integers >= ${allowZero ? 0 : 1}, found ${JSON.stringify(v)}`)
  return [...new Set(v as number[])].sort((a, b) => a - b)
}

export function resolveSpace(space: SearchSpace | undefined, numLayers: number): ResolvedSpace {
  const s = space ?? {}
  if (typeof s !== 'object' || s === null) throw new Error(`space: expected an object, found ${String(s)}`)
  const known = new Set(['groups', 'methods', 'loraRanks', 'bottleneckSizes', 'prefixLengths', 'loraTargets'])
  const unknown = Object.keys(s).filter((k) => !known.has(k))
  if (unknown.length > 0) throw new Error(`space.${unknown[0]}: not a field of the search space (fields: ${[...known].join(', ')})`)
  const groups = s.groups ?? Math.min(numLayers, 4)
  if (!Number.isInteger(groups) || groups < 1 || groups > numLayers) throw new Error(`space.groups: expected an integer in [1, ${numLayers}] (the model's layers), found ${String(s.groups)}`)
  const methods = s.methods ?? [...GROUP_METHODS]
  if (!Array.isArray(methods) || methods.length === 0 || methods.some((m) => !GROUP_METHODS.includes(m))) {
    throw new Error(`space.methods: expected a non-empty list of ${GROUP_METHODS.join(', ')}, found ${JSON.stringify(s.methods)}`)
  }
  const loraTargets = s.loraTargets ?? ['q_proj', 'v_proj']
  if (!Array.isArray(loraTargets) || loraTargets.length === 0 || loraTargets.some((t) => typeof t !== 'string' || t === '')) {
    throw new Error(`space.loraTargets: expected a non-empty list of module names, found ${JSON.stringify(s.loraTargets)}`)
  }
  const r: ResolvedSpace = {
    groups, methods: [...new Set(methods)], loraTargets,
    loraRanks: sizes('loraRanks', s.loraRanks, [1, 2, 4, 8, 16]),
    bottleneckSizes: sizes('bottleneckSizes', s.bottleneckSizes, [1, 2, 4, 8, 16, 32]),
    prefixLengths: sizes('prefixLengths', s.prefixLengths, [0, 1, 2, 4, 8, 16], true),
  }
  if (r.methods.every((m) => m === 'none') && r.prefixLengths.every((p) => p === 0)) throw new Error('space: only `none` and no prefix length above 0: no configuration trains anything')
  return r
}

/** Layer indices of each group: `groups` contiguous blocks, the first ones one layer longer. */
export function layerGroups(numLayers: number, groups: number): number[][] {
  const out: number[][] = []
  let at = 0
  for (let g = 0; g < groups; g++) {
    const n = Math.floor(numLayers / groups) + (g < numLayers % groups ? 1 : 0)
    out.push(Array.from({ length: n }, (_, i) => at + i))
    at += n
  }
  return out
}

/** The sizes a method chooses from ([0] for the sizeless ones). */
export function methodSizes(space: ResolvedSpace, method: GroupMethod): number[] {
  return method === 'lora' ? space.loraRanks : method === 'bottleneck' ? space.bottleneckSizes : [0]
}

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(xs.length)]

/** A uniform draw from the space. */
export function sampleConfig(space: ResolvedSpace, layers: number[][], rng: Rng): SearchConfig {
  const groups = layers.map((l) => {
    const method = pick(rng, space.methods)
    return { layers: l, method, size: pick(rng, methodSizes(space, method)) }
  })
  return { groups, prefixLength: pick(rng, space.prefixLengths), loraTargets: space.loraTargets }
}

/** One step to a neighbour: a group's size one notch up or down, its method redrawn, or the prefix moved a notch. */
export function mutateConfig(c: SearchConfig, space: ResolvedSpace, rng: Rng): SearchConfig {
  const next: SearchConfig = { ...c, groups: c.groups.map((g) => ({ ...g })) }
  const notch = (list: number[], v: number) => list[Math.max(0, Math.min(list.length - 1, list.indexOf(v) + (rng.next() < 0.5 ? -1 : 1)))]
  const gene = rng.int(c.groups.length + (space.prefixLengths.length > 1 ? 1 : 0))
  if (gene === c.groups.length) {
    next.prefixLength = notch(space.prefixLengths, c.prefixLength)
    return next
  }
  const g = next.groups[gene]
  const list = methodSizes(space, g.method)
  if (list.length > 1 && rng.next() < 0.5) g.size = notch(list, g.size)
  else {
    g.method = pick(rng, space.methods)
    g.size = pick(rng, methodSizes(space, g.method))
  }
  return next
}

/** Every group on `method` at `size`, no prefix: the uniform baselines (uniform LoRA at rank r). */
export function uniformConfig(layers: number[][], method: GroupMethod, size: number, loraTargets = ['q_proj', 'v_proj']): SearchConfig {
  return { groups: layers.map((l) => ({ layers: l, method, size })), prefixLength: 0, loraTargets }
}

/** A stable identity, to skip configurations already tried. */
export function configKey(c: SearchConfig): string {
  return `${c.groups.map((g) => `${g.method}${g.size}`).join('-')}|p${c.prefixLength}`
}

/** The adapters a configuration is made of, by name: one per non-empty group, and `prefix`. */
export function composeAdapters(c: SearchConfig): { name: string; config: PeftConfig }[] {
  const out: { name: string; config: PeftConfig }[] = []
  c.groups.forEach((g, i) => {
    const name = `g${i}_${g.method}`
    const layersToTransform = g.layers
    if (g.method === 'lora') out.push({ name, config: new LoraConfig({ r: g.size, loraAlpha: 2 * g.size, loraDropout: 0, targetModules: c.loraTargets, layersToTransform }) })
    else if (g.method === 'bottleneck') out.push({ name, config: new BottleneckAdapterConfig({ bottleneckSize: g.size, layersToTransform }) })
    else if (g.method === 'ia3') out.push({ name, config: new IA3Config({ layersToTransform }) })
  })
  if (c.prefixLength > 0) out.push({ name: 'prefix', config: new PrefixTuningConfig({ numVirtualTokens: c.prefixLength }) })
  return out
}
