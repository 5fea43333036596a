// Loading a model, optionally with an adapter folder, for the CLI commands. Either may be a Hub
// repo id (`org/name`): downloaded into the Hugging Face cache with a progress bar on stderr.
import { AutoModelForCausalLM, LlamaModel, type LoadOptions } from '../model'
import { PeftModel } from '../peft'
import { downloadProgress } from './progress'
import type { Io } from './io'

export function required(opts: Record<string, unknown>, key: string, what: string): string {
  const v = opts[key]
  if (typeof v !== 'string' || v === '') throw new Error(`--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is required (${what})`)
  return v
}

const text = (opts: Record<string, unknown>, key: string) => (opts[key] === undefined ? undefined : String(opts[key]))

/** The Hub options of `--model` (`--revision`, `--file`), with the progress bar. */
export function modelHubOptions(opts: Record<string, unknown>, io?: Io): LoadOptions {
  return { revision: text(opts, 'revision'), file: text(opts, 'file'), onProgress: io && downloadProgress(io) }
}

export async function loadModel(opts: Record<string, unknown>, io?: Io): Promise<LlamaModel | PeftModel> {
  const model = await AutoModelForCausalLM.fromPretrained(required(opts, 'model', 'a Hugging Face checkpoint folder, a .gguf file or a Hub id org/name'), modelHubOptions(opts, io))
  if (typeof opts.adapter === 'string') {
    try {
      return await PeftModel.fromPretrained(model, opts.adapter, { revision: text(opts, 'adapterRevision'), onProgress: io && downloadProgress(io) })
    } catch (e) {
      model.dispose()
      throw e
    }
  }
  return model
}
