// `peft-node train --method adapter-fusion|mole --compose DIR1,DIR2,...`: the paper's second
// stage. Each trained adapter folder (or Hub id) is loaded frozen, the composition is built over
// them with `addComposedAdapter` (which copies them), and only its own parameters train: the
// fusion's Q, K, V (Pfeiffer et al. 2021) or MoLE's gates (Wu et al. 2024). The composition is
// adapter `default`, so the Trainer saves it alone as the output folder.
import type { LlamaModel } from '../model'
import { PeftModel } from '../peft'
import type { Io } from './io'
import { METHODS } from './methods'

/** The kind of adapter each composing method takes, as `addComposedAdapter` requires. */
const EXPERTS: Record<string, { peftType: string; what: string }> = {
  'adapter-fusion': { peftType: 'BOTTLENECK_ADAPTER', what: 'a serial bottleneck adapter (`--method bottleneck`)' },
  mole: { peftType: 'LORA', what: 'a LoRA adapter (`--method lora`)' },
}

/** The folders of `--compose` (comma-separated on the command line, a list in a config file). */
export function composeDirs(value: unknown): string[] {
  const items = Array.isArray(value) ? value.map(String) : typeof value === 'string' ? value.split(',') : []
  return items.map((d) => d.trim()).filter((d) => d)
}

/**
 * Refuses `--compose` before any loading: another method, method options (the composition's
 * shape comes from its adapters), or fewer than 2 adapters.
 */
export function checkCompose(method: unknown, compose: unknown, methodOptions: Record<string, unknown>): { method: string; dirs: string[] } {
  const name = String(method ?? 'lora')
  const known = Object.keys(EXPERTS).find((k) => k === name.toLowerCase() || METHODS[k].peftType === name.toUpperCase())
  if (!known) throw new Error(`--compose: composes trained adapters for --method adapter-fusion or --method mole, not --method ${name}`)
  const dirs = composeDirs(compose)
  if (dirs.length < 2) throw new Error(`--compose: expected at least 2 trained adapter folders, comma-separated, found ${dirs.length}`)
  const options = Object.keys(methodOptions)
  if (options.length > 0) throw new Error(`--compose: the composition takes its shape from its adapters; method options do not apply (found ${options.map((k) => `--${k}`).join(', ')})`)
  return { method: known, dirs }
}

/** The PeftModel training the composition of `dirs` by `method`; the experts stay frozen. */
export async function composedPeftModel(model: LlamaModel, method: string, dirs: string[], io: Io): Promise<PeftModel> {
  const peft = new PeftModel(model)
  try {
    const names = dirs.map((_, i) => `expert${i}`)
    const expected = EXPERTS[method]
    for (const [i, dir] of dirs.entries()) {
      await peft.loadAdapter(dir, names[i])
      const found = peft.peftConfig[names[i]].peft_type
      if (found !== expected.peftType) throw new Error(`--compose ${dir}: ${method} composes ${expected.what}, found an adapter of peft_type "${String(found)}"`)
    }
    await peft.addComposedAdapter(method as 'adapter-fusion' | 'mole', names, 'default')
    for (const w of peft.warnings) io.err(`warning: ${w}`)
    peft.setAdapter('default')
    return peft
  } catch (e) {
    peft.dispose()
    throw e
  }
}
