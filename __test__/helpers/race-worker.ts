// Runs inside a worker_threads Worker (workers.spec.ts): forward, backward, generate, save and
// dispose racing on one model through Promise.allSettled, as soak.spec.ts does on the main
// thread; reports how each call settled.
import { parentPort, workerData } from 'node:worker_threads'
import { LlamaModel, LoraConfig, getPeftModel } from '../../src'
import { inputs } from './fixtures'

async function main(): Promise<void> {
  const { modelDir, dir, endless } = workerData as { modelDir: string; dir: string; endless?: boolean }
  const inp = inputs()
  const batch = { inputIds: inp.input_ids, attentionMask: inp.attention_mask, labels: inp.labels }
  const peft = await getPeftModel(await LlamaModel.fromPretrained(modelDir), new LoraConfig({ r: 4, targetModules: ['q_proj', 'v_proj'] }), { warn: false })
  const first = await peft.forward(batch)
  const want = await first.logits.toFloat32Array()
  parentPort!.postMessage({ type: 'ready' })
  // The worker the test terminates: native work stays in flight until it is terminated (a race
  // that ran to its end first, on a fast or a loaded host, would test nothing).
  while (endless) {
    await Promise.allSettled([peft.forward(batch), peft.generate(inp.input_ids[0].slice(0, 4), { maxNewTokens: 32, stopTokenIds: [] }), peft.forward(batch)])
  }
  const results = await Promise.allSettled([
    peft.forward(batch).then((o) => o.logits.toFloat32Array()),
    first.loss!.backward(),
    peft.generate(inp.input_ids[0].slice(0, 4), { maxNewTokens: 32, stopTokenIds: [] }),
    peft.savePretrained(dir),
    peft.forward(batch).then((o) => o.logits.toFloat32Array()),
    Promise.resolve().then(() => peft.dispose()),
    peft.forward(batch).then((o) => o.logits.toFloat32Array()),
  ])
  const outcomes = results.map((r) => {
    if (r.status === 'rejected') return r.reason instanceof Error ? `error: ${r.reason.message}` : `non-Error: ${String(r.reason)}`
    if (r.value instanceof Float32Array) return r.value.length === want.length && r.value.every((v, i) => v === want[i]) ? 'same logits' : 'different logits'
    return 'ok'
  })
  parentPort!.postMessage({ type: 'done', outcomes })
}

main().catch((e: Error) => parentPort!.postMessage({ type: 'error', message: e.stack ?? e.message }))
