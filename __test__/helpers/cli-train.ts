// `peft-node train --method NAME` on the tiny model for two steps (the survey methods' CLI checks).
import type { ExecutionContext } from 'ava'
import { mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { main } from '../../src/cli/main'
import { capture } from './cli'
import { MODEL_DIR } from './fixtures'
import { completions, writeJsonl } from './train-data'
import { tempDir } from './temp'

/** Trains `method` with `extra` flags; asserts exit 0 and returns the output folder, its metrics.jsonl and adapter config. */
export async function cliTrain(t: ExecutionContext, method: string, extra: string[] = []): Promise<{ out: string; metrics: string; config: Record<string, unknown> }> {
  const data = join(tempDir(t, 'peft-node-cli-'), 'data')
  mkdirSync(data)
  writeJsonl(join(data, 'train.jsonl'), completions(8))
  const out = join(tempDir(t, 'peft-node-cli-'), method)
  const io = capture()
  const code = await main(['train', '--model', MODEL_DIR, '--batch-size', '2', '--learning-rate', '1e-2', '--data', data, '--steps', '2', '--output', out, '--method', method, ...extra], io)
  t.is(code, 0, `${method}: ${io.errors()}`)
  return { out, metrics: readFileSync(join(out, 'metrics.jsonl'), 'utf8'), config: JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')) }
}
