// PEFT's `add_weighted_adapter` options in camelCase, checked for type here; the native
// core checks the values (names, ranks, density, base models) with errors naming them.
import type { NativeModel } from '../native'
import { intArg } from '../inputs'
import type { NativeWarning } from '../../index'

export type CombinationType =
  | 'svd'
  | 'linear'
  | 'cat'
  | 'ties'
  | 'ties_svd'
  | 'dare_ties'
  | 'dare_linear'
  | 'dare_ties_svd'
  | 'dare_linear_svd'
  | 'magnitude_prune'
  | 'magnitude_prune_svd'

export interface WeightedAdapterOptions {
  /** Default 'svd', as PEFT. A single adapter is always combined linearly. */
  combinationType?: CombinationType
  /** Rank of the *svd types' result (default: the largest rank of the adapters). */
  svdRank?: number
  /** Clamp the SVD factors to this quantile of their values (default: no clamp). */
  svdClamp?: number
  /** Accepted for PEFT parity; the truncated result does not depend on it. */
  svdFullMatrices?: boolean
  /** Fraction of entries kept, in (0, 1]: required by ties, dare and magnitude_prune types. */
  density?: number
  /** How TIES elects the sign of an entry (default 'total'). */
  majoritySignMethod?: 'total' | 'frequency'
  /** Seeds DARE's random masks (default 0). */
  seed?: number
}

function check(cond: boolean, name: string, expected: string, found: unknown): void {
  if (!cond) throw new Error(`argument \`${name}\`: expected ${expected}, found ${JSON.stringify(found) ?? String(found)}`)
}

export async function addWeightedAdapter(
  native: NativeModel,
  adapters: string[],
  weights: number[],
  name: string,
  o: WeightedAdapterOptions = {},
): Promise<NativeWarning[]> {
  check(Array.isArray(adapters) && adapters.every((a) => typeof a === 'string'), 'adapters', 'an array of adapter names', adapters)
  check(Array.isArray(weights) && weights.every((w) => typeof w === 'number'), 'weights', 'an array of numbers', weights)
  check(typeof name === 'string', 'adapterName', 'a string', name)
  if (o.svdRank !== undefined) intArg('svdRank', o.svdRank, 1)
  if (o.seed !== undefined) intArg('seed', o.seed, 0, Number.MAX_SAFE_INTEGER)
  return native.addWeightedAdapter(adapters, weights, name, {
    combinationType: o.combinationType,
    svdRank: o.svdRank,
    svdClamp: o.svdClamp,
    svdFullMatrices: o.svdFullMatrices,
    density: o.density,
    majoritySignMethod: o.majoritySignMethod,
    seed: o.seed,
  })
}
