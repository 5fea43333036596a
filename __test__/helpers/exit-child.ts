// Child process for exit.spec.ts: starts a long generate on the model in argv[2] and, once
// tokens flow, calls process.exit(0) while the native loop is still running.
import { LlamaModel } from '../../src'

async function main(): Promise<void> {
  const model = await LlamaModel.fromPretrained(process.argv[2])
  const pending = model.generate([5, 6, 7], { maxNewTokens: 60_000, stopTokenIds: [] })
  void pending.catch(() => undefined)
  let seen = 0
  for await (const _ of model.stream([5, 6, 7], { maxNewTokens: 60_000, stopTokenIds: [] })) {
    if (++seen === 20) {
      process.stdout.write('GENERATING\n')
      process.exit(0)
    }
  }
}

void main().catch((e) => {
  process.stderr.write(String(e))
  process.exit(1)
})
