// Which files of a repo a load needs: the same choice online (from the Hub's file list) and
// offline (from a cached snapshot), so an incomplete snapshot is never taken for a whole one.
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { checkRepoPath } from './cache'

export type RepoKind = 'model' | 'adapter'

export interface FilePlan {
  /** Fetched when the repo has them (tokenizer, generation config, chat template). */
  optional: string[]
  /** Needed; `config.json`/`adapter_config.json` comes last, so a snapshot holding it is whole. */
  required: string[]
  /** model.safetensors.index.json, whose shards are added once it is read. */
  index: string | null
  /** What the loader is given, relative to the snapshot ('' for the folder itself). */
  entry: string
}

const MODEL_OPTIONAL = ['generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja']
const INDEX = 'model.safetensors.index.json'

export function planFiles(repoId: string, kind: RepoKind, files: string[], file: string | undefined): FilePlan {
  const has = new Set(files)
  const ggufs = files.filter((f) => f.toLowerCase().endsWith('.gguf'))
  if (kind === 'adapter') {
    if (file !== undefined) throw new Error('file: picks a .gguf of a model repo; an adapter repo is loaded whole')
    const missing = ['adapter_config.json', 'adapter_model.safetensors'].filter((f) => !has.has(f))
    if (missing.length > 0) throw new Error(`${repoId}: not a PEFT adapter with safetensors weights (no ${missing.join(', ')}; files: ${listed(files)})`)
    return { optional: [], required: ['adapter_model.safetensors', 'adapter_config.json'], index: null, entry: '' }
  }
  if (file !== undefined) {
    if (typeof file !== 'string' || !file.toLowerCase().endsWith('.gguf')) throw new Error(`file: expected the name of a .gguf file in the repo, found ${JSON.stringify(file)}`)
    checkRepoPath(file, 'file')
    if (!has.has(file)) throw new Error(`file: ${file} is not in ${repoId} (its .gguf files: ${listed(ggufs)})`)
    return { optional: [], required: [file], index: null, entry: file }
  }
  if (!has.has('config.json')) {
    if (ggufs.length === 1) return { optional: [], required: ggufs, index: null, entry: ggufs[0] }
    if (ggufs.length > 1) throw new Error(`${repoId} has ${ggufs.length} .gguf files; pick one with the \`file\` option (--file): ${listed(ggufs)}`)
    throw new Error(`${repoId}: neither a transformers checkpoint (no config.json) nor a GGUF repo (files: ${listed(files)})`)
  }
  const optional = MODEL_OPTIONAL.filter((f) => has.has(f))
  if (has.has('model.safetensors')) return { optional, required: ['model.safetensors', 'config.json'], index: null, entry: '' }
  if (has.has(INDEX)) return { optional, required: [INDEX, 'config.json'], index: INDEX, entry: '' }
  throw new Error(`${repoId}: no model.safetensors or ${INDEX} (files: ${listed(files)}); peft-node loads safetensors or GGUF checkpoints`)
}

/** The shard files an index names (its weight_map values), checked as repo paths. */
export function indexShards(indexPath: string, repoId: string): string[] {
  const size = statSync(indexPath).size
  if (size > 64 << 20) throw new Error(`${repoId}/${INDEX}: ${size} bytes, more than an index of shards can be`)
  let map: unknown
  try {
    map = (JSON.parse(readFileSync(indexPath, 'utf8')) as { weight_map?: unknown }).weight_map
  } catch (e) {
    throw new Error(`${repoId}/${INDEX}: not JSON (${(e as Error).message})`)
  }
  if (!map || typeof map !== 'object') throw new Error(`${repoId}/${INDEX}: expected a "weight_map" object`)
  const shards = [...new Set(Object.values(map as Record<string, unknown>))]
  for (const s of shards) if (typeof s !== 'string') throw new Error(`${repoId}/${INDEX}: weight_map values must be file names`)
  return (shards as string[]).map((s) => checkRepoPath(s, `${repoId}/${INDEX} weight_map`))
}

/** Every file the plan needs (shards included once the index is at hand), in download order. */
export function neededFiles(plan: FilePlan, shards: string[]): string[] {
  const [last, ...rest] = [...plan.required].reverse()
  return [...plan.optional, ...rest.reverse(), ...shards, last]
}

/** The plan's required files missing from a cached snapshot (none: it is whole). */
export function missingFromSnapshot(plan: FilePlan, dir: string, repoId: string): string[] {
  const missing = plan.required.filter((f) => !existsSync(join(dir, f)))
  if (plan.index && existsSync(join(dir, plan.index))) missing.push(...indexShards(join(dir, plan.index), repoId).filter((f) => !existsSync(join(dir, f))))
  return missing
}

function listed(files: string[]): string {
  if (files.length === 0) return 'none'
  return files.length > 20 ? `${files.slice(0, 20).join(', ')}, ... (${files.length} in all)` : files.join(', ')
}
