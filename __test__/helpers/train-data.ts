// Small datasets and a tiny LoRA model for the data, trainer and CLI specs.
import { writeFileSync } from 'node:fs'
import { LlamaModel, LoraConfig, getPeftModel, type PeftModel, type TextTokenizer, type Tokenizer } from '../../src'
import { MODEL_DIR } from './fixtures'

export function writeJsonl(file: string, records: unknown[]): string {
  writeFileSync(file, records.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n') + '\n')
  return file
}

const WORDS = ['free', 'software', 'copy', 'person', 'granted', 'charge', 'permission', 'hereby', 'any', 'the']

/** Deterministic prompt/completion pairs of different lengths. */
export function completions(n: number): { prompt: string; completion: string }[] {
  return Array.from({ length: n }, (_, i) => ({
    prompt: `Say ${WORDS[i % WORDS.length]} ${i % 3 === 0 ? 'twice please' : 'now'}:`,
    completion: ` ${WORDS[i % WORDS.length]}`.repeat(1 + (i % 4)),
  }))
}

export function texts(n: number): { text: string }[] {
  return Array.from({ length: n }, (_, i) => ({ text: WORDS.slice(0, 3 + (i % 7)).join(' ') }))
}

/** The fixture tokenizer with a ChatML template in JS (the fixture has none). */
export function withChatML(tok: Tokenizer): TextTokenizer {
  return {
    encode: (t, o) => tok.encode(t, o),
    chatTemplate: 'chatml (test)',
    eosToken: tok.eosToken,
    padToken: tok.padToken,
    applyChatTemplate: (ms, o) => ms.map((m) => `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`).join('') + (o?.addGenerationPrompt ? '<|im_start|>assistant\n' : ''),
  }
}

export async function tinyLora(opts: { loraDropout?: number; r?: number } = {}): Promise<PeftModel> {
  const model = await LlamaModel.fromPretrained(MODEL_DIR)
  return getPeftModel(model, new LoraConfig({ r: opts.r ?? 4, targetModules: ['q_proj', 'v_proj'], loraDropout: opts.loraDropout ?? 0 }))
}

/** Every trainable parameter's values, by name. */
export async function snapshot(peft: PeftModel): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>()
  for (const [n, p] of peft.namedParameters({ trainableOnly: true })) out.set(n, await p.data.toFloat32Array())
  return out
}
