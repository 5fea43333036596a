// The record formats of mlx-lm's `mlx_lm.lora` (and TRL's SFTTrainer), checked one by one:
//   { "text": "..." }                                  the whole text is trained on
//   { "prompt": "...", "completion": "..." }           loss on the completion only (by default)
//   { "messages": [{ "role": "...", "content": "..." }, ...] }  loss on assistant turns (by default)
import type { Located } from './jsonl'

export interface ChatTurn {
  role: string
  content: string
}

export type Example =
  | { kind: 'text'; text: string; where: string }
  | { kind: 'completion'; prompt: string; completion: string; where: string }
  | { kind: 'chat'; messages: ChatTurn[]; where: string }

/** One record as given in JSONL or from TypeScript. */
export type ExampleInput = { text: string } | { prompt: string; completion: string } | { messages: ChatTurn[] }

function kindOf(v: Record<string, unknown>): string {
  return Object.keys(v).slice(0, 6).join(', ') || 'no keys'
}

export function parseExample({ value, where }: Located): Example {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`${where}: expected an object with "text", "prompt"/"completion" or "messages", found ${Array.isArray(value) ? 'an array' : JSON.stringify(value)}`)
  }
  const v = value as Record<string, unknown>
  if ('messages' in v) {
    if (!Array.isArray(v.messages) || v.messages.length === 0) throw new Error(`${where}: "messages": expected a non-empty array of { role, content }`)
    const messages = v.messages.map((m, i): ChatTurn => {
      const at = `${where}: messages[${i}]`
      if (typeof m !== 'object' || m === null) throw new Error(`${at}: expected an object { role, content }`)
      const { role, content } = m as Record<string, unknown>
      if (typeof role !== 'string' || role === '') throw new Error(`${at}: missing "role" (expected "system", "user" or "assistant")`)
      if (typeof content !== 'string') throw new Error(`${at}: "content": expected a string, found ${content === undefined ? 'nothing' : typeof content}`)
      return { ...(m as object), role, content }
    })
    if (!messages.some((m) => m.role === 'assistant')) throw new Error(`${where}: "messages" has no "assistant" turn, so there is nothing to learn`)
    return { kind: 'chat', messages, where }
  }
  if ('prompt' in v || 'completion' in v) {
    if (typeof v.prompt !== 'string') throw new Error(`${where}: "prompt": expected a string, found ${v.prompt === undefined ? 'nothing' : typeof v.prompt}`)
    if (typeof v.completion !== 'string') throw new Error(`${where}: "completion": expected a string, found ${v.completion === undefined ? 'nothing' : typeof v.completion}`)
    if (v.completion.trim() === '') throw new Error(`${where}: "completion" is empty`)
    return { kind: 'completion', prompt: v.prompt, completion: v.completion, where }
  }
  if ('text' in v) {
    if (typeof v.text !== 'string' || v.text.trim() === '') throw new Error(`${where}: "text": expected a non-empty string`)
    return { kind: 'text', text: v.text, where }
  }
  throw new Error(`${where}: unknown record format (keys: ${kindOf(v)}); expected "text", "prompt" + "completion", or "messages"`)
}
