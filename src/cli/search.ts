// `peft-node search`: the AutoPEFT-style configuration search (src/search/) from the command
// line: one line per trial, the Pareto front at the end, the best configuration as JSON.
import { writeFileSync } from 'node:fs'
import { AutoModelForCausalLM } from '../model'
import { loadData } from '../data/dataset'
import { applySearchConfig, checkSearchConfig, searchPeftConfig, type SearchSpace, type TrialResult } from '../search'
import { composeAdapters } from '../search/space'
import type { LlamaModel } from '../model'
import type { PeftModel } from '../peft'
import { readConfigFile, trainOptions } from './config'
import { modelHubOptions, required } from './load'
import type { Io } from './io'

/** `search`'s options, as `normalise` names them. */
export const SEARCH_OPTIONS = [
  'model', 'data', 'config', 'budget', 'trials', 'steps', 'seed', 'log', 'output', 'learningRate', 'batchSize', 'maxSeqLength', 'validSplit',
  'groups', 'methods', 'loraRanks', 'bottleneckSizes', 'prefixLengths', 'loraTargets', 'memoryCheck', 'revision', 'file',
]

function int(o: Record<string, unknown>, key: string, need = false): number | undefined {
  const v = o[key]
  if (v === undefined && !need) return undefined
  if (!Number.isInteger(v) || (v as number) < 0) throw new Error(`--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}: expected an integer${need && v === undefined ? ' (required)' : ''}, found ${String(v)}`)
  return v as number
}

/** `--lora-ranks 2,4,8` (or one number) -> [2, 4, 8]; the space checks the values. */
function list(o: Record<string, unknown>, key: string, numbers: boolean): unknown[] | undefined {
  const v = o[key]
  if (v === undefined) return undefined
  const items = String(v).split(',').map((s) => s.trim()).filter(Boolean)
  return numbers ? items.map(Number) : items
}

function describe(t: TrialResult): string {
  const groups = t.config.groups.map((g) => (g.method === 'none' || g.method === 'ia3' ? g.method : `${g.method}:${g.size}`)).join(' ')
  return `${groups}${t.config.prefixLength > 0 ? ` prefix:${t.config.prefixLength}` : ''}`
}

export async function searchCommand(flags: Record<string, unknown>, io: Io, signal?: AbortSignal): Promise<void> {
  const o = trainOptions(flags)
  const modelPath = required(o, 'model', 'a Hugging Face checkpoint folder or a .gguf file')
  const dataPath = required(o, 'data', 'a JSONL file, or a folder with train.jsonl and valid.jsonl')
  const budget = int(o, 'budget', true)!
  const trials = int(o, 'trials', true)!
  const space: SearchSpace = {
    groups: int(o, 'groups'), methods: list(o, 'methods', false) as SearchSpace['methods'], loraRanks: list(o, 'loraRanks', true) as number[] | undefined,
    bottleneckSizes: list(o, 'bottleneckSizes', true) as number[] | undefined, prefixLengths: list(o, 'prefixLengths', true) as number[] | undefined,
    loraTargets: list(o, 'loraTargets', false) as string[] | undefined,
  }
  for (const k of Object.keys(space) as (keyof SearchSpace)[]) if (space[k] === undefined) delete space[k]
  const model = await AutoModelForCausalLM.fromPretrained(modelPath, modelHubOptions(o, io))
  try {
    const seed = int(o, 'seed') ?? 0
    const data = await loadData(dataPath, model.tokenizer, { maxSeqLength: int(o, 'maxSeqLength'), validSplit: (o.validSplit as number | undefined) ?? 0.2, seed })
    io.out(`data: ${data.train.examples.length} training examples, ${data.valid!.examples.length} validation; budget ${budget.toLocaleString('en-US')} trainable parameters`)
    const r = await searchPeftConfig({
      model, data: { train: data.train, valid: data.valid }, budget, trials, seed, steps: int(o, 'steps'), space, signal, log: o.log as string | undefined,
      trainer: { learningRate: o.learningRate as number | undefined, batchSize: int(o, 'batchSize'), memoryCheck: o.memoryCheck === undefined ? undefined : o.memoryCheck !== false && o.memoryCheck !== 'false' },
      onTrial: (t) => io.out(`trial ${t.trial + 1}/${trials} (${t.phase}): ${describe(t)}  params ${t.params.toLocaleString('en-US')}  train ${t.trainLoss.toFixed(4)}  valid ${t.valLoss.toFixed(4)}  ${t.seconds.toFixed(1)} s`),
    })
    const why = r.reason === 'aborted' ? 'stopped' : r.reason === 'exhausted' ? 'no new configuration fits the budget' : 'done'
    io.out(`${why}: ${r.trials.length} trials, ${r.rejected} candidates over the budget rejected untrained`)
    io.out('Pareto front (trainable parameters vs validation loss):')
    for (const t of r.front) io.out(`  ${t.params.toLocaleString('en-US').padStart(12)}  ${t.valLoss.toFixed(4)}  ${describe(t)}`)
    if (r.best && typeof o.output === 'string') {
      const adapters = Object.fromEntries(composeAdapters(r.best.config).map((a) => [a.name, a.config.toJSON()]))
      writeFileSync(o.output, JSON.stringify({ config: r.best.config, params: r.best.params, valLoss: r.best.valLoss, adapters }, null, 2) + '\n')
      io.out(`best: ${o.output} (applySearchConfig(model, config) builds it for training)`)
    }
  } finally {
    model.dispose()
  }
}

/**
 * `train --search-result best.json`: the configuration `search --output` wrote, built on `model`
 * as in the search's trials (one adapter per group, plus the prefix), all active and trainable.
 */
export async function searchResultPeftModel(model: LlamaModel, file: string, seed: number | undefined): Promise<PeftModel> {
  const saved = readConfigFile(file, '--search-result', 'json')
  const config = checkSearchConfig(saved.config, `--search-result ${file}: config`, model.config.num_hidden_layers)
  return applySearchConfig(model, config, { seed })
}
