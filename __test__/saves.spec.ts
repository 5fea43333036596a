// Saves write a folder as a unit: concurrent saves into one folder serialise and leave one
// complete save; a save killed between two files never pairs one save's config with another's
// weights; no temporary files are left behind.
import test from 'ava'
import { spawn } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { LlamaModel } from '../src'
import { readSafetensors } from './helpers/fixtures'
import { tempDir } from './helpers/temp'
import { tinyLora } from './helpers/train-data'

/** The adapter's r as its config says and as its weights' shape says. */
function savedRanks(dir: string): { config: number; weights: number } {
  const config = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')).r as number
  const tensors = readSafetensors(join(dir, 'adapter_model.safetensors'))
  const a = [...tensors].find(([n]) => n.endsWith('lora_A.weight'))![1]
  return { config, weights: a.shape[0] }
}

function leftovers(dir: string): string[] {
  const inside = readdirSync(dir).filter((f) => f.includes('.tmp') || f.includes('.old'))
  const beside = readdirSync(dirname(dir)).filter((f) => f.startsWith('.'))
  return [...inside, ...beside]
}

test('six concurrent adapter saves into one folder leave one complete save and no temporary files', async (t) => {
  const dir = join(tempDir(t), 'adapter')
  const models = await Promise.all([2, 4, 2, 4, 2, 4].map((r) => tinyLora({ r })))
  t.teardown(() => models.forEach((m) => m.dispose()))
  await Promise.all(models.map((m) => m.savePretrained(dir)))
  const { config, weights } = savedRanks(dir)
  t.is(config, weights, 'config and weights come from the same save')
  t.deepEqual(leftovers(dir), [])
  t.deepEqual(readdirSync(dir).sort(), ['adapter_config.json', 'adapter_model.safetensors'])
})

test('six concurrent model saves into one folder leave one loadable checkpoint', async (t) => {
  const dir = join(tempDir(t), 'model')
  const peft = await tinyLora()
  t.teardown(() => peft.dispose())
  const model = peft.baseModel
  await Promise.all(Array.from({ length: 6 }, (_, i) => model.savePretrained(dir, { dtype: i % 2 ? 'bfloat16' : 'float32' })))
  t.deepEqual(leftovers(dir), [])
  const again = await LlamaModel.fromPretrained(dir)
  t.teardown(() => again.dispose())
  t.truthy(again.tokenizer)
})

test('a save killed at any moment leaves the folder holding one whole save', async (t) => {
  for (let round = 0; round < 4; round++) {
    const dir = join(tempDir(t), 'adapter')
    const child = spawn(process.execPath, ['--import=tsx', join(__dirname, 'helpers', 'save-child.ts'), dir], { stdio: ['ignore', 'pipe', 'inherit'] })
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('SAVING') && resolve())
      child.on('exit', (code) => reject(new Error(`child exited (${code}) before saving`)))
    })
    await new Promise((r) => setTimeout(r, 100 + 150 * round))
    child.kill('SIGKILL')
    await new Promise((r) => child.on('exit', r))
    const { config, weights } = savedRanks(dir)
    t.is(config, weights, `round ${round}: config r=${config} beside weights of rank ${weights}`)
    t.deepEqual(readdirSync(dir).filter((f) => f.startsWith('.')), [], 'no temporary files inside the folder')
  }
})

test('while another process saves again and again, a reader always finds the folder and its files (atomic exchange on Linux)', async (t) => {
  if (process.platform !== 'linux') return t.pass('renameat2 is Linux-only; elsewhere the folder is briefly absent between two renames')
  const dir = join(tempDir(t), 'adapter')
  const child = spawn(process.execPath, ['--import=tsx', join(__dirname, 'helpers', 'save-child.ts'), dir], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => child.kill('SIGKILL'))
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('SAVING') && resolve())
    child.on('exit', (code) => reject(new Error(`child exited (${code}) before saving`)))
  })
  let reads = 0
  const missing: string[] = []
  const ranks = new Set<number>()
  const end = Date.now() + 3000
  while (Date.now() < end) {
    try {
      // Two opens: a swap may fall between them (a reader that needs both from one save opens
      // the folder once); each file on its own is always one whole save's.
      const { config } = savedRanks(dir)
      ranks.add(config)
    } catch (e) {
      missing.push((e as Error).message)
    }
    reads++
    if (reads % 50 === 0) await new Promise((r) => setImmediate(r))
  }
  t.log(`${reads} reads, ranks seen ${[...ranks].join(', ')}, ${missing.length} failed`)
  t.deepEqual(missing.slice(0, 3), [], 'the folder or one of its files was missing during a save')
  t.true(ranks.size === 2, 'both saves were seen: the reads overlapped the swaps')
})
