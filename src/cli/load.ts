// Loading a model, optionally with an adapter folder, for the CLI commands.
import { AutoModelForCausalLM, LlamaModel } from '../model'
import { PeftModel } from '../peft'

export function required(opts: Record<string, unknown>, key: string, what: string): string {
  const v = opts[key]
  if (typeof v !== 'string' || v === '') throw new Error(`--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is required (${what})`)
  return v
}

export async function loadModel(opts: Record<string, unknown>): Promise<LlamaModel | PeftModel> {
  const model = await AutoModelForCausalLM.fromPretrained(required(opts, 'model', 'a Hugging Face checkpoint folder or a .gguf file'))
  if (typeof opts.adapter === 'string') return PeftModel.fromPretrained(model, opts.adapter)
  return model
}
