// `npm run demo`: loads SmolLM2-135M-Instruct (fetched from PyPI into .cache/) and chats.
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel } from '../index'

export const SMOLLM2 = join(__dirname, '..', '..', '.cache', 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf')

async function main(): Promise<void> {
  if (!existsSync(SMOLLM2)) {
    console.error(`The demo model is missing: ${SMOLLM2}\nRun \`npm run fetch:smollm2\` first.`)
    process.exit(1)
  }
  const model = await LlamaModel.fromPretrained(SMOLLM2)
  const tok = model.tokenizer!
  for (const question of ['What is the capital of France?', 'Name three primary colors.']) {
    const prompt = tok.applyChatTemplate([{ role: 'user', content: question }], { addGenerationPrompt: true })
    const ids = tok.encode(prompt)
    process.stdout.write(`> ${question}\n`)
    const decoder = tok.streamDecoder()
    for await (const id of model.stream(ids, { maxNewTokens: 60 })) process.stdout.write(decoder.step(id))
    process.stdout.write(decoder.finish() + '\n\n')
  }
  model.dispose()
}

main().catch((e: Error) => {
  console.error(e.message)
  process.exit(1)
})
