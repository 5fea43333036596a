// `peft-node train`: flags and/or a config file -> data, adapter, Trainer with progress; Ctrl-C
// stops after the current step and saves a checkpoint. Without arguments: the demo.
import { join } from 'node:path'
import { AutoModelForCausalLM } from '../model'
import { RawPeftConfig, type PeftConfig } from '../methods/config'
import { loadData } from '../data/dataset'
import { Trainer } from '../train/trainer'
import { readTrainerState, resolveCheckpoint } from '../train/checkpoint'
import { trainOptions } from './config'
import { cliPeftModel, methodConfig, methodOptions } from './methods'
import { attachProgress, duration } from './progress'
import { modelHubOptions, required } from './load'
import { isLaplace, runDemo } from './demo'
import { planMemory, checkPlanFits } from '../plan'
import type { Io } from './io'
import { fitAndReport } from './laplace'
import { checkCompose, composedPeftModel } from './compose'
import { searchResultPeftModel } from './search'

const num = (v: unknown) => (v === undefined ? undefined : Number(v))

/**
 * Before the model is loaded: with --max-seq-length (the longest row) and a method the planner
 * estimates (LoRA, IA³) on a local checkpoint, a run that cannot fit is refused before any
 * allocation. Otherwise the Trainer checks once the model and data are loaded.
 */
function preloadMemoryCheck(modelPath: string, config: PeftConfig, o: Record<string, unknown>): void {
  if (o.maxSeqLength === undefined) return
  let plan
  try {
    plan = planMemory(modelPath, { method: config, batchSize: num(o.batchSize) ?? 4, seqLen: num(o.maxSeqLength), gradientCheckpointing: o.gradientCheckpointing === true || o.gradientCheckpointing === 'true' })
  } catch {
    return // a Hub id, or a method the planner does not estimate: the Trainer's check applies
  }
  checkPlanFits(plan, plan, { escape: '--no-memory-check' })
}

export async function trainCommand(flags: Record<string, unknown>, io: Io, signal?: AbortSignal): Promise<void> {
  const o = trainOptions(flags)
  // No data: the demo (SmolLM2 and the US capitals), with any method and trainer options given.
  if (flags.demo || (o.model === undefined && o.data === undefined && o.resume === undefined)) {
    if (o.compose !== undefined || o.searchResult !== undefined) throw new Error(`${o.compose !== undefined ? '--compose' : '--search-result'}: needs --model and --data (the demo trains one adapter)`)
    const method = o.method === undefined && Object.keys(methodOptions(o)).length === 0 ? undefined : { name: o.method, options: methodOptions(o) }
    return runDemo({
      output: typeof o.output === 'string' ? o.output : 'adapters/capitals', model: o.model as string | undefined, method,
      epochs: num(o.epochs), steps: num(o.steps), batchSize: num(o.batchSize), learningRate: num(o.learningRate), seed: num(o.seed), flags,
    }, io)
  }
  const modelPath = required(o, 'model', 'a Hugging Face checkpoint folder or a .gguf file')
  const dataPath = required(o, 'data', 'a JSONL file, or a folder with train.jsonl and valid.jsonl')
  const output = typeof o.output === 'string' ? o.output : 'adapters'
  // --compose: the composition of trained adapters (checked before anything is loaded).
  const compose = o.compose === undefined ? undefined : checkCompose(o.method, o.compose, methodOptions(o))
  const searchResult = o.searchResult === undefined ? undefined : String(o.searchResult)
  if (searchResult !== undefined && (o.method !== undefined || compose || Object.keys(methodOptions(o)).length > 0)) {
    throw new Error('--search-result: the searched configuration sets the methods and their sizes; --method, --compose and method options do not apply')
  }
  // Checkpoints hold one adapter (TrainerState.adapter); a searched configuration has several.
  if (searchResult !== undefined && o.resume !== undefined) throw new Error('--search-result: cannot --resume yet (checkpoints hold one adapter; a searched configuration has one per group)')
  let config: PeftConfig = methodConfig(o.method, compose ? {} : methodOptions(o), num(o.steps))
  const methodGiven = o.method !== undefined || Object.keys(methodOptions(o)).length > 0
  if (typeof o.resume === 'string' && !methodGiven) {
    config = new RawPeftConfig(readTrainerState(resolveCheckpoint(o.resume)).adapter.config) // resume as trained
  }
  if (o.memoryCheck !== false && o.memoryCheck !== 'false' && searchResult === undefined) preloadMemoryCheck(modelPath, config, o)
  const t0 = Date.now()
  const model = await AutoModelForCausalLM.fromPretrained(modelPath, modelHubOptions(o, io))
  const peft = compose
    ? await composedPeftModel(model, compose.method, compose.dirs, io)
    : searchResult !== undefined
      ? await searchResultPeftModel(model, searchResult, num(o.seed))
      : await cliPeftModel(model, config, num(o.seed), 'train', flags, io)
  peft.printTrainableParameters(io.out)
  const data = await loadData(dataPath, peft.tokenizer, { maxSeqLength: num(o.maxSeqLength), maskPrompt: o.maskPrompt as boolean | undefined, truncation: o.truncation as boolean | undefined, validSplit: num(o.validSplit), seed: num(o.seed) })
  for (const w of data.warnings.slice(0, 10)) io.err(`warning: ${w}`)
  if (data.warnings.length > 10) io.err(`warning: ... and ${data.warnings.length - 10} more`)
  io.out(`data: ${data.train.examples.length} training examples${data.valid ? `, ${data.valid.examples.length} validation` : ''}`)
  const trainer = new Trainer(peft, {
    train: data.train, valid: data.valid, output, signal,
    maxSteps: num(o.steps), epochs: num(o.epochs), batchSize: num(o.batchSize), learningRate: num(o.learningRate),
    gradientAccumulationSteps: num(o.gradientAccumulationSteps), warmupSteps: num(o.warmupSteps), weightDecay: num(o.weightDecay),
    lrSchedule: o.lrSchedule as 'linear' | undefined, maxGradNorm: num(o.maxGradNorm), evalEvery: num(o.evalEvery), evalBatches: num(o.evalBatches),
    saveEvery: num(o.saveEvery), saveTotalLimit: num(o.saveTotalLimit), seed: num(o.seed), resumeFromCheckpoint: o.resume as string | undefined,
    gradientCheckpointing: o.gradientCheckpointing === undefined ? undefined : o.gradientCheckpointing === true || o.gradientCheckpointing === 'true',
    memoryCheck: o.memoryCheck === undefined ? undefined : o.memoryCheck === true || o.memoryCheck === 'true',
  })
  attachProgress(trainer, io)
  const end = await trainer.train().catch((e: unknown) => {
    if (signal?.aborted && e === signal.reason) throw new Error('interrupted before the first step: nothing was trained or saved')
    throw e
  })
  io.out(`${end.reason === 'aborted' ? 'stopped' : 'done'} at step ${end.step} in ${duration(Date.now() - t0)}; final loss ${end.loss?.toFixed(4) ?? '-'}${end.eval ? `, validation loss ${end.eval.loss.toFixed(4)} (perplexity ${end.eval.perplexity.toFixed(3)})` : ''}`)
  io.out(`adapter: ${output}  loss curve: ${join(output, 'loss.svg')}  checkpoint: ${end.checkpoint ?? '-'}`)
  if (isLaplace(o.method) && end.reason !== 'aborted') await fitAndReport(peft, data, output, { batchSize: num(o.batchSize), seed: num(o.seed) }, io, signal)
  peft.dispose()
}
