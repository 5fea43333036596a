// LoRA adapters exported as llama.cpp GGUF adapters (peft.saveGguf), checked by llama.cpp itself
// (node-llama-cpp 3.21.1): the base GGUF plus our adapter file must give the argmax our own
// forward gives with the adapter, and the adapter must change llama.cpp's output. Refusals for
// what the format cannot express run on the tiny fixture model.
import test, { type ExecutionContext } from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AutoModelForCausalLM, IA3Config, LoraConfig, getPeftModel, type LlamaModel, type PeftModel } from '../src'
import { CHAT_PROMPTS, SMOLLM2_GGUF, compareWithLlamaCpp, ifModelPresent, llamaCppArgmax } from './helpers/llamacpp'
import { randomizeB } from './helpers/random-lora'
import { MODEL_DIR } from './helpers/fixtures'
import { tempDir } from './helpers/temp'

const ALL_LINEAR = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']

/** `sigma`: lora_B's spread; rsLoRA's and the patterns' larger scalings get a smaller one, so that both adapters move the model by a similar amount. */
async function exportAndCompare(t: ExecutionContext, config: LoraConfig, outtype: 'f32' | 'f16' | 'q8_0', sigma = 0.05) {
  const file = join(tempDir(t, 'peft-node-gguf-lora-'), 'adapter.gguf')
  let ids: number[][] = []
  const attach = async (base: LlamaModel) => {
    const peft = await getPeftModel(base, config, { seed: 3 })
    randomizeB(peft, 7, sigma)
    await peft.saveGguf(file, { outtype })
    const tok = base.tokenizer!
    ids = CHAT_PROMPTS.map((p) => tok.encode('text' in p ? p.text : tok.applyChatTemplate(p.messages)))
    return peft
  }
  await compareWithLlamaCpp(t, SMOLLM2_GGUF, CHAT_PROMPTS, { attach, loras: [file] })
  // The adapter changes what llama.cpp predicts: its argmax with and without the file differ.
  const [withAdapter, without] = [await llamaCppArgmax(SMOLLM2_GGUF, ids, { loras: [file] }), await llamaCppArgmax(SMOLLM2_GGUF, ids)]
  const total = ids.reduce((a, r) => a + r.length, 0)
  const changed = withAdapter.reduce((a, row, i) => a + row.filter((x, j) => x !== without[i][j]).length, 0)
  t.log(`the adapter changes llama.cpp's argmax at ${changed}/${total} positions`)
  t.true(changed >= 0.1 * total, `the adapter changed only ${changed}/${total} of llama.cpp's argmaxes`)
}

ifModelPresent(test, SMOLLM2_GGUF, 'export-gguf.spec.ts', 'fetch:smollm2')('SmolLM2 + a LoRA on every linear, exported as a GGUF adapter (f32): llama.cpp agrees with our forward', (t) =>
  exportAndCompare(t, new LoraConfig({ r: 8, loraAlpha: 16, targetModules: ALL_LINEAR }), 'f32'),
)

ifModelPresent(test, SMOLLM2_GGUF, 'export-gguf.spec.ts', 'fetch:smollm2')('rsLoRA with rank and alpha patterns (q8_0): per-tensor scaling folded exactly', (t) =>
  exportAndCompare(t, new LoraConfig({ r: 8, loraAlpha: 16, useRslora: true, rankPattern: { q_proj: 4, down_proj: 16 }, alphaPattern: { v_proj: 64 }, targetModules: ALL_LINEAR }), 'q8_0', 0.015),
)

test('what a llama.cpp adapter cannot express is refused with the alternative', async (t) => {
  const dir = tempDir(t, 'peft-node-gguf-refuse-')
  const cases: [string, () => Promise<PeftModel>, RegExp][] = [
    ['DoRA', async () => getPeftModel(await AutoModelForCausalLM.fromPretrained(MODEL_DIR), new LoraConfig({ r: 4, useDora: true, targetModules: ['q_proj'] })), /DoRA.*merged model/],
    ['IA3', async () => getPeftModel(await AutoModelForCausalLM.fromPretrained(MODEL_DIR), new IA3Config({ targetModules: ['k_proj', 'down_proj'], feedforwardModules: ['down_proj'] })), /LoRA only, this one is IA3.*merged model/],
  ]
  for (const [what, make, message] of cases) {
    const peft = await make()
    await t.throwsAsync(peft.saveGguf(join(dir, `${what}.gguf`)), { message }, what)
    peft.dispose()
  }
  const peft = await getPeftModel(await AutoModelForCausalLM.fromPretrained(MODEL_DIR), new LoraConfig({ r: 4, targetModules: ['q_proj'] }))
  await t.throwsAsync(peft.saveGguf(join(dir, 'x.gguf'), { outtype: 'q4_0' as 'f16' }), { message: /outtype.*f32, f16, bf16 or q8_0/ })
  await t.throwsAsync(peft.saveGguf(''), { message: /path/ })
  peft.dispose()
})

test('peft-node export --format gguf-lora writes the adapter file; other formats and an existing output are refused', async (t) => {
  const { main } = await import('../src/cli/main')
  const lines: string[] = []
  const io = { out: (l: string) => lines.push(l), err: (l: string) => lines.push(l), write: (s: string) => lines.push(s), isTTY: false }
  const dir = tempDir(t, 'peft-node-export-cli-')
  const output = join(dir, 'lora.gguf')
  const adapter = join(MODEL_DIR, '..', 'cases', 'lora_qv')
  const args = ['export', '--model', MODEL_DIR, '--adapter', adapter, '--format', 'gguf-lora', '--output', output]
  t.is(await main(args, io), 0, lines.join('\n'))
  const bytes = readFileSync(output)
  t.is(bytes.subarray(0, 4).toString('latin1'), 'GGUF')
  for (const key of ['general.type', 'adapter', 'adapter.lora.alpha', 'blk.0.attn_q.weight.lora_a', 'blk.1.attn_v.weight.lora_b']) t.true(bytes.includes(key), key)
  t.regex(lines.join('\n'), /llama-cli -m .* --lora /)
  lines.length = 0
  t.is(await main(args, io), 1)
  t.regex(lines.join('\n'), /already exists; pass --force/)
  lines.length = 0
  t.is(await main([...args.slice(0, 6), '--format', 'onnx', '--output', join(dir, 'x')], io), 1)
  t.regex(lines.join('\n'), /--format onnx: expected one of gguf-lora, gguf, mlx/)
})
