// `generate`, `chat`, `eval`, `info`, `merge` and `export`.
import { existsSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { GGUF_OUTTYPES, LlamaModel, type GgufOuttype } from '../model'
import { ollamaModelfile } from '../ollama'
import { PeftModel } from '../peft'
import type { ChatMessage } from '../tokenizer'
import { loadData } from '../data/dataset'
import { evaluate } from '../train/evaluate'
import { trainOptions } from './config'
import { cliPeftModel, methodConfig, methodOptions } from './methods'
import { loadModel, required } from './load'
import type { Io } from './io'
import type { DType } from '../tensor'

const num = (v: unknown, d: number) => (v === undefined ? d : Number(v))

function genOpts(o: Record<string, unknown>) {
  const temperature = num(o.temperature ?? o.temp, 0)
  return { maxNewTokens: num(o.maxTokens ?? o.maxNewTokens, 256), doSample: temperature > 0, temperature: temperature > 0 ? temperature : 1, topP: num(o.topP, 1), topK: num(o.topK, 0), seed: num(o.seed, 0) }
}

async function streamReply(model: LlamaModel | PeftModel, ids: number[], o: Record<string, unknown>, io: Io): Promise<string> {
  const tok = model.tokenizer!
  const dec = tok.streamDecoder()
  let text = ''
  for await (const id of model.stream(ids, genOpts(o))) {
    const piece = dec.step(id)
    text += piece
    io.write(piece)
  }
  const rest = dec.finish()
  io.write(rest + '\n')
  return text + rest
}

// The chat history grows with each turn: render it off the JS thread.
async function promptIds(model: LlamaModel | PeftModel, messages: ChatMessage[], raw: boolean): Promise<number[]> {
  const tok = model.tokenizer
  if (!tok) throw new Error('the model has no tokenizer')
  const useTemplate = !raw && !!tok.chatTemplate
  return tok.encode(useTemplate ? await tok.applyChatTemplateAsync(messages, { addGenerationPrompt: true }) : messages.map((m) => m.content).join('\n'))
}

export async function generateCommand(flags: Record<string, unknown>, positional: string[], io: Io): Promise<void> {
  const o = trainOptions(flags)
  const prompt = (o.prompt as string | undefined) ?? positional.join(' ')
  if (!prompt) throw new Error('give a prompt (--prompt "..." or as an argument)') // main prefixes `peft-node generate: `
  const model = await loadModel(o, io)
  const messages: ChatMessage[] = typeof o.system === 'string' ? [{ role: 'system', content: o.system }] : []
  await streamReply(model, await promptIds(model, [...messages, { role: 'user', content: prompt }], o.raw === true), o, io)
  model.dispose()
}

export async function chatCommand(flags: Record<string, unknown>, io: Io): Promise<void> {
  const o = trainOptions(flags)
  const model = await loadModel(o, io)
  const input = io.input ?? process.stdin
  // A terminal echoes what is typed; piped lines are echoed after the prompt so the transcript reads as a dialogue.
  const echo = !(input as { isTTY?: boolean }).isTTY
  const rl = createInterface({ input, output: echo ? undefined : process.stdout, terminal: !echo, prompt: '> ' })
  // On a terminal readline draws the prompt (so line editing keeps it); Ctrl-C there ends the chat.
  const prompt = () => (echo ? io.write('> ') : rl.prompt())
  rl.on('SIGINT', () => rl.close())
  const history: ChatMessage[] = typeof o.system === 'string' ? [{ role: 'system', content: o.system }] : []
  io.out('chat: /reset clears the history, /exit (or Ctrl-D) quits')
  try {
    prompt()
    // The async iterator queues lines that arrive while a reply is generated; `rl.question` did
    // not, so piped input (`printf 'A\nB\n' | peft-node chat`) lost every line after the first.
    for await (const line of rl) {
      if (echo) io.write(`${line}\n`)
      if (line.trim() === '/exit') break
      if (line.trim() === '/reset') history.splice(history[0]?.role === 'system' ? 1 : 0)
      else {
        history.push({ role: 'user', content: line })
        history.push({ role: 'assistant', content: (await streamReply(model, await promptIds(model, history, false), o, io)).trim() })
      }
      prompt()
    }
  } finally {
    rl.close()
    model.dispose()
  }
}

/** eval's data: a JSONL file, or a folder's valid.jsonl, else its train.jsonl. */
function evalData(path: string): string {
  if (!existsSync(path) || !statSync(path).isDirectory()) return path // loadData names a missing file
  const file = ['valid.jsonl', 'train.jsonl'].map((f) => join(path, f)).find((f) => existsSync(f))
  if (!file) throw new Error(`${path}: a data folder for eval needs a valid.jsonl or a train.jsonl`)
  return file
}

export async function evalCommand(flags: Record<string, unknown>, io: Io): Promise<void> {
  const o = trainOptions(flags)
  const data = evalData(required(o, 'data', 'a JSONL file, or a folder with valid.jsonl or train.jsonl'))
  const model = await loadModel(o, io)
  const peft = model instanceof PeftModel ? model : new PeftModel(model)
  const d = await loadData(data, model.tokenizer, { maxSeqLength: o.maxSeqLength as number | undefined, maskPrompt: o.maskPrompt as boolean | undefined })
  const r = await evaluate(peft, d.train.examples, { batchSize: num(o.batchSize, 4), padTokenId: model.tokenizer?.padToken?.id ?? 0 })
  io.out(`${d.train.name}: ${d.train.examples.length} examples, ${r.targetTokens} target tokens: loss ${r.loss.toFixed(4)}  perplexity ${r.perplexity.toFixed(3)}`)
  model.dispose()
}

/** `info M` or `info --model M`: the model as the argument, as generate takes its prompt. */
export async function infoCommand(flags: Record<string, unknown>, positional: string[], io: Io): Promise<void> {
  if (positional.length > 1) throw new Error(`unexpected argument "${positional[1]}" (\`info\` takes one: the model)`)
  if (positional.length === 1 && flags.model !== undefined) throw new Error('give the model once: as the argument or as --model')
  const o: Record<string, unknown> = { ...trainOptions(flags), ...(positional.length === 1 ? { model: positional[0] } : {}) }
  // The method's options are checked before the (slow) model load.
  const config = typeof o.adapter === 'string' ? null : methodConfig(o.method, methodOptions(o))
  let model = await loadModel(o, io)
  if (!(model instanceof PeftModel)) model = await cliPeftModel(model, config!, undefined, 'info', flags, io)
  const c = model.config
  io.out(`model: ${String(o.model)} (${c.num_hidden_layers} layers, hidden ${c.hidden_size}, vocab ${c.vocab_size})`)
  const cfg = model.peftConfig[model.activeAdapter]
  io.out(`adapter: ${String(cfg.peft_type)} ${JSON.stringify(Object.fromEntries(Object.entries(cfg).filter(([k, v]) => v !== null && !['peft_type', 'base_model_name_or_path', 'peft_version', 'task_type'].includes(k) && !(typeof v === 'object' && Object.keys(v as object).length === 0))))}`)
  model.printTrainableParameters(io.out)
  const modules = model.targetedModules()
  const kinds = [...new Set(modules.map((m) => m.split('.').at(-1)))]
  io.out(`targeted modules: ${modules.length} (${kinds.join(', ')})`)
  for (const m of modules) io.out(`  ${m}`)
  model.dispose()
}

/** merge never writes into a folder that holds something unless told to (`--force`). */
function checkOutput(output: string, force: boolean): void {
  if (!existsSync(output)) return
  if (!statSync(output).isDirectory()) throw new Error(`--output ${output}: is a file, not a folder`)
  if (!force && readdirSync(output).length > 0) {
    throw new Error(`--output ${output}: already exists and is not empty; pass --force to write into it (files of the same name are replaced)`)
  }
}

/** Merges `--adapter` into `--model` and writes a Hugging Face checkpoint to `--output`. */
export async function mergeCommand(flags: Record<string, unknown>, io: Io): Promise<void> {
  const adapter = required(flags, 'adapter', 'the adapter folder to merge')
  const output = required(flags, 'output', 'the folder to write the merged checkpoint to')
  checkOutput(output, flags.force === true || flags.force === 'true')
  const model = await loadModel({ ...flags, adapter }, io)
  if (!(model instanceof PeftModel)) throw new Error('--adapter did not load an adapter')
  const merged = await model.mergeAndUnload()
  const dtype = flags.dtype === undefined ? undefined : (String(flags.dtype) as DType)
  await merged.savePretrained(output, { dtype })
  io.out(`merged ${adapter} into ${String(flags.model)}: wrote ${output} (config.json, model.safetensors${dtype ? ` in ${dtype}` : ''}, tokenizer files)`)
  merged.dispose()
}

const EXPORT_FORMATS = ['gguf-lora', 'gguf', 'mlx']
const LORA_OUTTYPES = ['f32', 'f16', 'bf16', 'q8_0'] as const
const force = (flags: Record<string, unknown>) => flags.force === true || flags.force === 'true'

/**
 * Writes `--adapter` on `--model` in another tool's format to `--output`: llama.cpp's LoRA GGUF
 * (`gguf-lora`), the merged model as one GGUF (`gguf`, optionally with an Ollama Modelfile
 * beside it), or an mlx-lm adapter folder (`mlx`).
 */
export async function exportCommand(flags: Record<string, unknown>, io: Io): Promise<void> {
  const format = required(flags, 'format', `the format to write: ${EXPORT_FORMATS.join(', ')}`)
  if (!EXPORT_FORMATS.includes(format)) throw new Error(`--format ${format}: expected one of ${EXPORT_FORMATS.join(', ')}`)
  const adapter = required(flags, 'adapter', 'the adapter folder to export')
  const output = required(flags, 'output', format === 'mlx' ? 'the folder to write the mlx-lm adapter to' : 'the .gguf file to write')
  const outtypes: readonly string[] = format === 'gguf' ? GGUF_OUTTYPES : LORA_OUTTYPES
  const outtype = flags.outtype === undefined ? 'f16' : String(flags.outtype)
  if (format !== 'mlx' && !outtypes.includes(outtype)) throw new Error(`--outtype ${outtype}: expected one of ${outtypes.join(', ')}${format === 'gguf-lora' ? ' (4-bit types are for the merged model: --format gguf)' : ''}`)
  if (flags.ollama !== undefined && format !== 'gguf') throw new Error('--ollama: only with --format gguf (Ollama runs the merged model file)')
  if (format === 'mlx') checkOutput(output, force(flags))
  else if (existsSync(output) && !force(flags)) throw new Error(`--output ${output}: already exists; pass --force to replace it`)
  const model = await loadModel({ ...flags, adapter }, io)
  if (!(model instanceof PeftModel)) throw new Error('--adapter did not load an adapter')
  if (format === 'gguf') return exportMerged(model, output, outtype as GgufOuttype, flags.ollama === true || flags.ollama === 'true', io)
  try {
    if (format === 'mlx') await model.saveMlx(output)
    else await model.saveGguf(output, { outtype: outtype as (typeof LORA_OUTTYPES)[number] })
  } finally {
    model.dispose()
  }
  if (format === 'mlx') {
    io.out(`exported ${adapter} as an mlx-lm adapter: ${output} (adapters.safetensors, adapter_config.json)`)
    io.out(`run it: mlx_lm.generate --model <the base model in mlx> --adapter-path ${output} --prompt "..."`)
    return
  }
  io.out(`exported ${adapter} as a llama.cpp LoRA adapter (${outtype}): ${output}`)
  io.out(`run it: llama-cli -m ${String(flags.model)} --lora ${output}`)
}

/** `--format gguf`: merges the adapter and writes one GGUF, plus `Modelfile` beside it with `--ollama`. */
async function exportMerged(peft: PeftModel, output: string, outtype: GgufOuttype, ollama: boolean, io: Io): Promise<void> {
  const merged = await peft.mergeAndUnload()
  try {
    await merged.saveGguf(output, { outtype })
    io.out(`merged the adapter and wrote ${output} (${outtype}, tokenizer and chat template included)`)
    io.out(`run it: llama-cli -m ${output}`)
    if (ollama) {
      const tok = merged.tokenizer
      const m = ollamaModelfile({ from: `./${basename(output)}`, chatTemplate: tok?.chatTemplate ?? null, eosToken: tok?.eosToken?.token ?? null })
      const file = join(dirname(output), 'Modelfile')
      writeFileSync(file + '.tmp', m.text)
      renameSync(file + '.tmp', file)
      for (const w of m.warnings) io.err(`warning: ${w}`)
      io.out(`wrote ${file}${m.shape ? ` (${m.shape} template)` : ''}: ollama create NAME -f ${file}`)
    }
  } finally {
    merged.dispose()
  }
}
