// `peft-node adapter-soup`: AdapterSoup (Chronopoulou et al. 2023) by CLI name, as `adapterSoup`
// does in TS: the trained adapter folders are loaded onto one base, each is scored by its loss on
// the new domain's samples (--data), the --top-k closest are averaged, and the soup is written to
// --output as an ordinary adapter folder (adapter_config.json, adapter_model.safetensors).
import { basename } from 'node:path'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { PeftModel } from '../peft'
import { LlamaModel } from '../model'
import { loadData } from '../data/dataset'
import { adapterSoup } from '../compose/soup'
import { trainOptions } from './config'
import { loadModel, required } from './load'
import type { Io } from './io'

export const SOUP_OPTIONS = ['model', 'adapters', 'data', 'output', 'topK', 'batchSize', 'maxSeqLength', 'maskPrompt', 'force', 'config', 'revision', 'file']

/** The soup is adapter `default` (saved at the folder's root); the sources are `source0`, … */
const SOUP = 'default'

export async function soupCommand(flags: Record<string, unknown>, io: Io): Promise<void> {
  const o = trainOptions(flags)
  const dirs = required(o, 'adapters', 'the trained adapter folders to choose from, comma-separated').split(',').map((d) => d.trim()).filter((d) => d)
  if (dirs.length < 2) throw new Error(`--adapters: expected at least 2 adapter folders, comma-separated, found ${dirs.length}`)
  const data = required(o, 'data', 'a JSONL file of samples of the new domain')
  const output = required(o, 'output', 'the folder to write the soup adapter to')
  if (existsSync(output) && (!statSync(output).isDirectory() || (readdirSync(output).length > 0 && o.force !== true && o.force !== 'true'))) {
    throw new Error(`--output ${output}: already exists and is not an empty folder; pass --force to write into it`)
  }
  const topK = o.topK === undefined ? undefined : Number(o.topK)
  const base = await loadModel({ ...o, adapter: undefined }, io)
  if (!(base instanceof LlamaModel)) throw new Error('adapter-soup: --model must be a base model')
  const peft = new PeftModel(base)
  try {
    const names = dirs.map((_, i) => `source${i}`)
    for (const [i, dir] of dirs.entries()) await peft.loadAdapter(dir, names[i])
    const d = await loadData(data, base.tokenizer, { maxSeqLength: o.maxSeqLength as number | undefined, maskPrompt: o.maskPrompt as boolean | undefined })
    const padTokenId = base.tokenizer?.padToken?.id ?? 0
    const r = await adapterSoup(peft, { adapters: names, examples: d.train.examples, topK, adapterName: SOUP, batchSize: Number(o.batchSize ?? 4), padTokenId })
    await peft.savePretrained(output, { selectedAdapters: [SOUP] })
    const label = (n: string) => basename(dirs[names.indexOf(n)])
    for (const n of names) io.out(`${dirs[names.indexOf(n)]}: loss ${r.losses[n].toFixed(4)}${r.selected.includes(n) ? '  (in the soup)' : ''}`)
    io.out(`soup of ${r.selected.map(label).join(', ')}: loss ${r.loss.toFixed(4)} on ${d.train.examples.length} samples; wrote ${output}`)
  } finally {
    peft.dispose()
  }
}
