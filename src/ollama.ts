// An Ollama Modelfile beside an exported GGUF: `FROM`, the chat template in Ollama's Go
// template syntax, and a `PARAMETER stop` per end-of-turn token. Ollama's templates are Go
// `text/template`, not Jinja, so the common shapes are recognised by their markers (ChatML,
// Llama 3, Gemma) and written the way Ollama's own templates for them are; any other Jinja
// template is left out, with a comment and a warning (Ollama then falls back to matching the
// GGUF's `tokenizer.chat_template` against the templates it knows).

interface ChatShape {
  name: string
  marker: string
  template: string
  stops: string[]
}

const SHAPES: ChatShape[] = [
  {
    name: 'ChatML',
    marker: '<|im_start|>',
    template: `{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
`,
    stops: ['<|im_end|>', '<|im_start|>'],
  },
  {
    name: 'Llama 3',
    marker: '<|start_header_id|>',
    template: `{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

`,
    stops: ['<|eot_id|>', '<|start_header_id|>', '<|end_header_id|>'],
  },
  {
    name: 'Gemma',
    marker: '<start_of_turn>',
    template: `{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}
{{ .Content }}<end_of_turn>
{{ end }}<start_of_turn>model
`,
    stops: ['<end_of_turn>'],
  },
]

export interface ModelfileOptions {
  /** The GGUF file as `FROM` names it, relative to the Modelfile (e.g. `./model.gguf`). */
  from: string
  /** The tokenizer's Jinja chat template, if any. */
  chatTemplate: string | null
  /** The tokenizer's end-of-sequence token text, added to the stops. */
  eosToken?: string | null
}

/** The Modelfile text, which shape was converted (null if none), and warnings for what was left out. */
export function ollamaModelfile(opts: ModelfileOptions): { text: string; shape: string | null; warnings: string[] } {
  const lines = [`# Ollama Modelfile written by peft-node: \`ollama create NAME -f Modelfile\`, then \`ollama run NAME\``, `FROM ${opts.from}`]
  const warnings: string[] = []
  const shape = opts.chatTemplate ? SHAPES.find((s) => opts.chatTemplate!.includes(s.marker)) : undefined
  if (shape) {
    lines.push(`# TEMPLATE: the ${shape.name} chat format of the model's Jinja template, in Ollama's Go syntax`)
    lines.push(`TEMPLATE """${shape.template}"""`)
  } else {
    const why = opts.chatTemplate ? 'its Jinja chat template is not one peft-node converts (ChatML, Llama 3, Gemma)' : 'the model has no chat template'
    lines.push(`# No TEMPLATE: ${why}; Ollama falls back to the GGUF's tokenizer.chat_template if it recognises it`)
    warnings.push(`Ollama Modelfile written without TEMPLATE: ${why}`)
  }
  const stops = [...new Set([...(shape?.stops ?? []), ...(opts.eosToken ? [opts.eosToken] : [])])]
  for (const s of stops) lines.push(`PARAMETER stop ${JSON.stringify(s)}`)
  return { text: lines.join('\n') + '\n', shape: shape?.name ?? null, warnings }
}
