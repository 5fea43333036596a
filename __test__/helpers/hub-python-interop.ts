// By-hand check (not a spec: CI has no Python with huggingface_hub) that the Hub cache is shared
// with Python both ways, against the local Hub stand-in:
//   1. peft-node downloads tiny/llama; Python's scan_cache_dir and hf_hub_download(local_files_only=True) read it;
//   2. Python's snapshot_download fetches tiny/llama (HF_ENDPOINT = the stand-in); peft-node loads it offline.
// Run: PYTHON=/tmp/ggufconv/venv/bin/python npx tsx __test__/helpers/hub-python-interop.ts
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AutoModelForCausalLM, downloadFromHub } from '../../src'
import { MODEL_DIR } from './fixtures'
import { commitOf, startHub } from './hub-server'
import { tempDir } from './temp'

const PYTHON = process.env.PYTHON ?? 'python3'
const files = Object.fromEntries(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'].map((f) => [f, readFileSync(join(MODEL_DIR, f))]))

/** Asynchronous: the stand-in Hub answers from this process's event loop while Python runs. */
async function python(code: string, env: Record<string, string>): Promise<string> {
  const { stdout } = await promisify(execFile)(PYTHON, ['-c', code], { env: { ...process.env, ...env }, encoding: 'utf8' })
  return stdout.trim()
}

async function main() {
  const hub = await startHub('127.0.0.2')
  const commit = commitOf('main')
  hub.repos.set('tiny/llama', { refs: { main: commit }, commits: { [commit]: files } })
  try {
    const ours = tempDir(undefined, 'peft-node-hub-ours-')
    const snap = await downloadFromHub('tiny/llama', { cacheDir: ours, endpoint: hub.endpoint })
    console.log(`1. peft-node wrote ${snap}`)
    const read = await python(`
import huggingface_hub as h, sys
info = h.scan_cache_dir("${ours}")
assert not info.warnings, info.warnings
(repo,) = info.repos
(rev,) = repo.revisions
print("scan_cache_dir:", repo.repo_id, repo.repo_type, "refs", sorted(repo.refs), "files", sorted(f.file_name for f in rev.files), "size", repo.size_on_disk)
for f in ["config.json", "model.safetensors", "tokenizer.json"]:
    p = h.hf_hub_download("tiny/llama", f, cache_dir="${ours}", local_files_only=True)
    assert p.startswith("${snap}"), p
print("hf_hub_download(local_files_only=True): ok,", h.__version__)
`, {})
    console.log(`   Python: ${read.replace(/\n/g, '\n   Python: ')}`)

    const theirs = tempDir(undefined, 'peft-node-hub-theirs-')
    const wrote = await python(`
import huggingface_hub as h
print(h.snapshot_download("tiny/llama", cache_dir="${theirs}"))
`, { HF_ENDPOINT: hub.endpoint, HF_HUB_DISABLE_XET: '1', HF_HUB_DISABLE_TELEMETRY: '1' })
    console.log(`2. Python's snapshot_download wrote ${wrote.split('\n').at(-1)}`)
    const before = hub.log.length
    const model = await AutoModelForCausalLM.fromPretrained('tiny/llama', { cacheDir: theirs, localFilesOnly: true })
    console.log(`   peft-node loaded it offline: vocab ${model.config.vocab_size}, ${hub.log.length - before} requests, tokenizer ${model.tokenizer ? 'yes' : 'no'}`)
    model.dispose()
    const online = await downloadFromHub('tiny/llama', { cacheDir: theirs, endpoint: hub.endpoint })
    console.log(`   and online: ${online} (${hub.log.slice(before).filter((r) => r.method !== 'GET' || !r.url.startsWith('/api/')).length} file requests: the cache was used)`)
    console.log('interop: ok')
  } finally {
    await hub.close()
  }
}

main().catch((e) => {
  console.error(`interop: FAILED: ${(e as Error).stack}`)
  process.exit(1)
})
