// Hugging Face Hub downloads against a local stand-in for the Hub (helpers/hub-server.ts): the
// shared cache layout, revisions, tokens, the LFS redirect to a CDN host, resume after a dropped
// connection, ETag checks, offline mode, GGUF repos and the CLI. No network is used.
import test from 'ava'
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { AutoModelForCausalLM, PeftModel, downloadFromHub, type HubProgress } from '../src'
import { resolvePretrained } from '../src/hub/resolve'
import { main } from '../src/cli/main'
import { downloadProgress } from '../src/cli/progress'
import { FIXTURES, MODEL_DIR } from './helpers/fixtures'
import { capture } from './helpers/cli'
import { tempDir } from './helpers/temp'
import { commitOf, gitSha1, startHub, type HubServer } from './helpers/hub-server'
import { createHash } from 'node:crypto'

const read = (dir: string, files: string[]) => Object.fromEntries(files.map((f) => [f, readFileSync(join(dir, f))]))
const MODEL_FILES = read(MODEL_DIR, ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'])
const ADAPTER_FILES = read(join(FIXTURES, 'cases', 'lora_qv'), ['adapter_config.json', 'adapter_model.safetensors'])
const GGUF = readFileSync(join(__dirname, 'data', 'tiny-gguf', 'qwen2.q8_0.gguf'))
const MAIN = commitOf('main')
const V1 = commitOf('v1')
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** The fixture model split into two safetensors shards and their index, as `save_pretrained(max_shard_size=...)` writes. */
function shardedModel(): Record<string, Buffer> {
  const st = MODEL_FILES['model.safetensors']
  const n = Number(st.readBigUInt64LE(0))
  const header = JSON.parse(st.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>
  const names = Object.keys(header).filter((k) => k !== '__metadata__')
  const shards = [names.slice(0, names.length >> 1), names.slice(names.length >> 1)]
  const out: Record<string, Buffer> = {}
  const weightMap: Record<string, string> = {}
  shards.forEach((group, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`
    let offset = 0
    const entries = group.map((k) => {
      const [a, b] = header[k].data_offsets
      const e = { dtype: header[k].dtype, shape: header[k].shape, data_offsets: [offset, offset + b - a] }
      offset += b - a
      weightMap[k] = file
      return [k, e] as const
    })
    const json = Buffer.from(JSON.stringify(Object.fromEntries(entries)))
    const len = Buffer.alloc(8)
    len.writeBigUInt64LE(BigInt(json.length))
    out[file] = Buffer.concat([len, json, ...group.map((k) => st.subarray(8 + n + header[k].data_offsets[0], 8 + n + header[k].data_offsets[1]))])
  })
  out['model.safetensors.index.json'] = Buffer.from(JSON.stringify({ metadata: {}, weight_map: weightMap }))
  return out
}

let hub: HubServer
test.before(async () => {
  hub = await startHub()
  const readme = Buffer.from('# not downloaded: a load needs only its own files\n')
  hub.repos.set('tiny/llama', { refs: { main: MAIN, 'v1.0': V1 }, commits: { [MAIN]: { ...MODEL_FILES, 'README.md': readme }, [V1]: MODEL_FILES } })
  hub.repos.set('tiny/layout', hub.repos.get('tiny/llama')!)
  hub.repos.set('tiny/private', { refs: { main: MAIN }, commits: { [MAIN]: MODEL_FILES }, token: 'hf_secret' })
  const { 'model.safetensors': _whole, ...rest } = MODEL_FILES
  hub.repos.set('tiny/sharded', { refs: { main: MAIN }, commits: { [MAIN]: { ...rest, ...shardedModel() } } })
  hub.repos.set('tiny/lora', { refs: { main: MAIN }, commits: { [MAIN]: ADAPTER_FILES } })
  hub.repos.set('tiny/gguf', { refs: { main: MAIN }, commits: { [MAIN]: { 'qwen2.q8_0.gguf': GGUF } } })
  hub.repos.set('tiny/ggufs', { refs: { main: MAIN }, commits: { [MAIN]: { 'a.q8_0.gguf': GGUF, 'b.q8_0.gguf': GGUF } } })
})
test.after.always(() => hub?.close())

/** Options of one test: its own cache, our server, and the requests it made for `repo`s (tests run at once). */
function setup(t: Parameters<typeof tempDir>[0]) {
  const cacheDir = tempDir(t, 'peft-node-hub-')
  const start = hub.log.length
  return { cacheDir, endpoint: hub.endpoint, requests: (...repos: string[]) => hub.log.slice(start).filter((r) => repos.some((id) => r.url.includes(`/${id}/`))) }
}

/** Sets environment variables for one serial test; restores (or removes) them after it. */
function setEnv(t: NonNullable<Parameters<typeof tempDir>[0]>, vars: Record<string, string | undefined>) {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) delete process.env[k]
      else process.env[k] = x
    }
  }
  t.teardown(() => apply(saved))
  apply(vars)
}

const repoDir = (cacheDir: string, id: string) => join(cacheDir, `models--${id.replace('/', '--')}`)

test('a Hub id downloads into the shared cache layout and loads; a second load makes no download', async (t) => {
  const o = setup(t)
  const events: HubProgress[] = []
  const model = await AutoModelForCausalLM.fromPretrained('tiny/layout', { cacheDir: o.cacheDir, endpoint: o.endpoint, onProgress: (p) => events.push(p) })
  t.is(model.config.vocab_size, 384)
  t.truthy(model.tokenizer)
  model.dispose()
  const root = repoDir(o.cacheDir, 'tiny/layout')
  t.is(readFileSync(join(root, 'refs', 'main'), 'utf8'), MAIN)
  const snap = join(root, 'snapshots', MAIN)
  t.deepEqual(readdirSync(snap).sort(), Object.keys(MODEL_FILES).sort(), 'README.md is not fetched')
  for (const [f, data] of Object.entries(MODEL_FILES)) {
    const etag = f.endsWith('.safetensors') ? sha256(data) : gitSha1(data)
    t.true(lstatSync(join(snap, f)).isSymbolicLink(), f)
    t.is(readlinkSync(join(snap, f)), join('..', '..', 'blobs', etag), `${f}: a relative link to its blob`)
    t.deepEqual(readFileSync(join(root, 'blobs', etag)), data)
  }
  t.false(readdirSync(join(root, 'blobs')).some((f) => f.endsWith('.incomplete')))
  // The LFS file came from the CDN host, without the token; every other request stayed on the Hub.
  const cdn = o.requests('tiny/layout').filter((r) => r.host === 'cdn')
  t.is(cdn.length, 1)
  const total = Object.values(MODEL_FILES).reduce((n, b) => n + b.length, 0)
  t.deepEqual(events.at(-1) && [events.at(-1)!.bytes, events.at(-1)!.total], [total, total])
  t.true(events.every((e, i) => i === 0 || e.bytes >= events[i - 1].bytes), 'bytes never go back')
  const before = o.requests('tiny/layout').length
  const again = await downloadFromHub('tiny/layout', { cacheDir: o.cacheDir, endpoint: o.endpoint })
  t.is(again, snap)
  t.deepEqual(o.requests('tiny/layout').slice(before).map((r) => r.method), ['GET'], 'only the file list is asked for')
})

test('revision: a tag and a commit each get their own snapshot and ref', async (t) => {
  const o = setup(t)
  t.is(await downloadFromHub('tiny/llama', { cacheDir: o.cacheDir, endpoint: o.endpoint, revision: 'v1.0' }), join(repoDir(o.cacheDir, 'tiny/llama'), 'snapshots', V1))
  t.is(readFileSync(join(repoDir(o.cacheDir, 'tiny/llama'), 'refs', 'v1.0'), 'utf8'), V1)
  t.is(await downloadFromHub('tiny/llama', { cacheDir: o.cacheDir, endpoint: o.endpoint, revision: MAIN }), join(repoDir(o.cacheDir, 'tiny/llama'), 'snapshots', MAIN))
  t.false(existsSync(join(repoDir(o.cacheDir, 'tiny/llama'), 'refs', MAIN)), 'a commit needs no ref')
  // The same bytes in both commits are one blob.
  t.is(readdirSync(join(repoDir(o.cacheDir, 'tiny/llama'), 'blobs')).length, Object.keys(MODEL_FILES).length)
  const a = o.requests('tiny/llama').filter((r) => r.url.includes('/resolve/'))
  t.true(a.every((r) => r.url.includes(V1) || r.url.includes(MAIN)), 'files are fetched at the resolved commit')
})

test('an unknown repo, an unknown revision and a missing token are clear errors that leave no snapshot', async (t) => {
  const o = setup(t)
  const opts = { cacheDir: o.cacheDir, endpoint: o.endpoint }
  await t.throwsAsync(AutoModelForCausalLM.fromPretrained('tiny/nope', opts), { message: /^tiny\/nope: no such local file or folder; as a Hub repo id: Hub repo tiny\/nope on http:\/\/127\.0\.0\.1:\d+ not found, or private \(HTTP 401; no token was given: set HF_TOKEN/ })
  await t.throwsAsync(downloadFromHub('tiny/llama', { ...opts, revision: 'v9' }), { message: /revision "v9" not found in tiny\/llama/ })
  await t.throwsAsync(downloadFromHub('tiny/private', opts), { message: /not found, or private \(HTTP 401; no token/ })
  await t.throwsAsync(downloadFromHub('tiny/private', { ...opts, token: 'hf_wrong' }), { message: /HTTP 401; the token was refused/ })
  t.false(existsSync(join(repoDir(o.cacheDir, 'tiny/private'), 'snapshots')))
  t.false(existsSync(join(repoDir(o.cacheDir, 'tiny/llama'), 'refs', 'v9')))
  const dir = await downloadFromHub('tiny/private', { ...opts, token: 'hf_secret' })
  t.true(existsSync(join(dir, 'model.safetensors')))
  const cdn = o.requests('tiny/private').filter((r) => r.host === 'cdn')
  t.true(cdn.length > 0 && cdn.every((r) => r.authorization === undefined), 'the token never goes to the CDN host')
  t.is(o.requests('tiny/private').filter((r) => r.host === 'hub').at(-1)?.authorization, 'Bearer hf_secret')
  await t.throwsAsync(downloadFromHub('tiny/llama', { ...opts, revision: '../../etc' }), { message: /revision: "..\/..\/etc" is not a valid/ })
  await t.throwsAsync(downloadFromHub('not a repo', opts), { message: /repoId: expected a Hub repo id "org\/name"/ })
})

test.serial('the token comes from HF_TOKEN, else from $HF_HOME/token', async (t) => {
  const o = setup(t)
  const home = tempDir(t, 'peft-node-hfhome-')
  setEnv(t, { HF_TOKEN: 'hf_secret', HF_HOME: undefined, HF_TOKEN_PATH: undefined })
  t.true(existsSync(await downloadFromHub('tiny/private', { cacheDir: o.cacheDir, endpoint: o.endpoint })))
  setEnv(t, { HF_TOKEN: undefined, HF_HOME: home })
  writeFileSync(join(home, 'token'), 'hf_secret\n')
  t.true(existsSync(await downloadFromHub('tiny/private', { cacheDir: tempDir(t), endpoint: o.endpoint })))
  t.deepEqual(o.requests('tiny/private').filter((r) => r.host === 'hub').map((r) => r.authorization).filter((a) => a !== 'Bearer hf_secret'), [])
})

test('a connection dropped mid-file is resumed with Range', async (t) => {
  const o = setup(t)
  hub.repos.set('tiny/drop-once', hub.repos.get('tiny/llama')!)
  hub.faults.dropOnce.add('tiny/drop-once/model.safetensors')
  const model = await AutoModelForCausalLM.fromPretrained('tiny/drop-once', { cacheDir: o.cacheDir, endpoint: o.endpoint })
  model.dispose()
  const cdn = o.requests('tiny/drop-once').filter((r) => r.host === 'cdn')
  const size = MODEL_FILES['model.safetensors'].length
  t.is(cdn.length, 2)
  t.is(cdn[0].range, undefined)
  const from = Number(/^bytes=(\d+)-$/.exec(cdn[1].range ?? '')?.[1])
  t.true(from > 0 && from < size, `resumed from byte ${from} of ${size}`)
  t.deepEqual(readFileSync(join(repoDir(o.cacheDir, 'tiny/drop-once'), 'blobs', sha256(MODEL_FILES['model.safetensors']))), MODEL_FILES['model.safetensors'])
})

test('an interrupted download keeps its partial file, leaves no snapshot that loads, and the next run resumes it', async (t) => {
  const o = setup(t)
  const opts = { cacheDir: o.cacheDir, endpoint: o.endpoint }
  hub.repos.set('tiny/drops', hub.repos.get('tiny/llama')!)
  hub.faults.dropAlways.add('tiny/drops/model.safetensors')
  await t.throwsAsync(AutoModelForCausalLM.fromPretrained('tiny/drops', opts), { message: /download of .* interrupted .* the partial file is kept at .*\.incomplete and the next call resumes it/ })
  const root = repoDir(o.cacheDir, 'tiny/drops')
  const partial = join(root, 'blobs', `${sha256(MODEL_FILES['model.safetensors'])}.incomplete`)
  const kept = statSync(partial).size
  t.true(kept > 0 && kept < MODEL_FILES['model.safetensors'].length)
  t.false(existsSync(join(root, 'refs', 'main')))
  t.false(existsSync(join(root, 'snapshots', MAIN, 'config.json')), 'config.json is linked last')
  await t.throwsAsync(AutoModelForCausalLM.fromPretrained('tiny/drops', { ...opts, localFilesOnly: true }), { message: /not in the Hub cache .* offline mode is on/ })
  hub.faults.dropAlways.delete('tiny/drops/model.safetensors')
  const start = o.requests('tiny/drops').length
  const model = await AutoModelForCausalLM.fromPretrained('tiny/drops', opts)
  model.dispose()
  t.deepEqual(o.requests('tiny/drops').slice(start).filter((r) => r.host === 'cdn').map((r) => r.range), [`bytes=${kept}-`])
  t.false(existsSync(partial))
})

test('bytes that do not match the ETag are refused and deleted', async (t) => {
  const o = setup(t)
  hub.repos.set('tiny/corrupt', hub.repos.get('tiny/llama')!)
  for (const f of ['model.safetensors', 'config.json']) {
    hub.faults.badEtag.add(`tiny/corrupt/${f}`)
    await t.throwsAsync(downloadFromHub('tiny/corrupt', { cacheDir: o.cacheDir, endpoint: o.endpoint }), {
      message: f === 'config.json' ? /refused: its git blob sha1 is [0-9a-f]{40}, the ETag says 0{40}; the corrupt file was deleted/ : /refused: its sha256 is [0-9a-f]{64}, the ETag says 0{64}/,
    })
    hub.faults.badEtag.delete(`tiny/corrupt/${f}`)
  }
  const blobs = join(repoDir(o.cacheDir, 'tiny/corrupt'), 'blobs')
  t.false(readdirSync(blobs).some((b) => b.startsWith('0000') || b.endsWith('.incomplete')))
  t.false(existsSync(join(repoDir(o.cacheDir, 'tiny/corrupt'), 'snapshots', MAIN, 'config.json')))
})

test.serial('offline (HF_HUB_OFFLINE, localFilesOnly, or the Hub unreachable) loads from the cache', async (t) => {
  const o = setup(t)
  const snap = await downloadFromHub('tiny/llama', { cacheDir: o.cacheDir, endpoint: o.endpoint })
  setEnv(t, { HF_HUB_OFFLINE: '1' })
  const start = hub.log.length
  const model = await AutoModelForCausalLM.fromPretrained('tiny/llama', { cacheDir: o.cacheDir, endpoint: o.endpoint })
  t.is(model.config.vocab_size, 384)
  model.dispose()
  t.is(hub.log.length, start, 'no request when offline (serial: no other test runs)')
  await t.throwsAsync(downloadFromHub('tiny/llama', { cacheDir: o.cacheDir, revision: 'v1.0' }), { message: /revision "v1.0"\) is not in the Hub cache .* offline mode is on/ })
  setEnv(t, { HF_HUB_OFFLINE: undefined })
  t.is(await downloadFromHub('tiny/llama', { cacheDir: o.cacheDir, localFilesOnly: true }), snap)
  // A closed port: the Hub cannot be reached, the cached snapshot serves.
  t.is(await downloadFromHub('tiny/llama', { cacheDir: o.cacheDir, endpoint: 'http://127.0.0.1:9' }), snap)
  await t.throwsAsync(downloadFromHub('tiny/lora', { cacheDir: o.cacheDir, endpoint: 'http://127.0.0.1:9' }), { message: /not in the Hub cache .* the Hub is unreachable \(could not reach 127\.0\.0\.1:9/ })
})

test('a sharded checkpoint: the index and every shard it lists are fetched, and it loads', async (t) => {
  const o = setup(t)
  const model = await AutoModelForCausalLM.fromPretrained('tiny/sharded', { cacheDir: o.cacheDir, endpoint: o.endpoint })
  const whole = await AutoModelForCausalLM.fromPretrained(MODEL_DIR)
  t.is(model.config.num_hidden_layers, 2)
  const logits = async (m: typeof model) => [...(await (await m.forward({ inputIds: [[5, 6, 7]] })).logits.toFloat32Array())]
  t.deepEqual(await logits(model), await logits(whole))
  model.dispose()
  whole.dispose()
  const files = readdirSync(join(repoDir(o.cacheDir, 'tiny/sharded'), 'snapshots', MAIN)).sort()
  t.deepEqual(files.filter((f) => f.startsWith('model')), ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json'])
})

test('an adapter repo loads onto the model with PeftModel.fromPretrained', async (t) => {
  const o = setup(t)
  const opts = { cacheDir: o.cacheDir, endpoint: o.endpoint }
  const model = await AutoModelForCausalLM.fromPretrained('tiny/llama', opts)
  const peft = await PeftModel.fromPretrained(model, 'tiny/lora', opts)
  t.is(peft.peftConfig.default.peft_type, 'LORA')
  t.deepEqual(readdirSync(join(repoDir(o.cacheDir, 'tiny/lora'), 'snapshots', MAIN)).sort(), ['adapter_config.json', 'adapter_model.safetensors'])
  await t.throwsAsync(PeftModel.fromPretrained(model, 'tiny/gguf', opts), { message: /tiny\/gguf: not a PEFT adapter with safetensors weights \(no adapter_config.json, adapter_model.safetensors/ })
  peft.dispose()
})

test('a GGUF repo: its one .gguf loads; with several, `file` picks one and none is refused with the list', async (t) => {
  const o = setup(t)
  const opts = { cacheDir: o.cacheDir, endpoint: o.endpoint }
  const model = await AutoModelForCausalLM.fromPretrained('tiny/gguf', opts)
  t.is(model.config.modelType, 'qwen2')
  model.dispose()
  await t.throwsAsync(AutoModelForCausalLM.fromPretrained('tiny/ggufs', opts), { message: /tiny\/ggufs has 2 \.gguf files; pick one with the `file` option \(--file\): a\.q8_0\.gguf, b\.q8_0\.gguf/ })
  await t.throwsAsync(AutoModelForCausalLM.fromPretrained('tiny/ggufs', { ...opts, file: 'c.gguf' }), { message: /file: c\.gguf is not in tiny\/ggufs \(its \.gguf files: a\.q8_0\.gguf, b\.q8_0\.gguf\)/ })
  const path = await downloadFromHub('tiny/ggufs', { ...opts, file: 'b.q8_0.gguf' })
  t.is(path, join(repoDir(o.cacheDir, 'tiny/ggufs'), 'snapshots', MAIN, 'b.q8_0.gguf'))
  t.false(existsSync(join(repoDir(o.cacheDir, 'tiny/ggufs'), 'snapshots', MAIN, 'a.q8_0.gguf')), 'only the picked file is fetched')
})

test('a path that exists locally wins over a Hub id; an aborted download keeps its partial file', async (t) => {
  const o = setup(t)
  t.is(await resolvePretrained('src/hub', 'model', { endpoint: o.endpoint, cacheDir: o.cacheDir }), 'src/hub')
  t.is(o.requests('src/hub').length, 0)
  hub.repos.set('tiny/abort', hub.repos.get('tiny/llama')!)
  hub.faults.dropAlways.add('tiny/abort/model.safetensors') // the abort comes first, after the first bytes
  const ac = new AbortController()
  const onProgress = (p: HubProgress) => p.file === 'model.safetensors' && p.fileBytes > 0 && ac.abort()
  await t.throwsAsync(downloadFromHub('tiny/abort', { ...o, signal: ac.signal, onProgress }), { message: /aborted; the partial file is kept at .*\.incomplete/ })
  t.false(existsSync(join(repoDir(o.cacheDir, 'tiny/abort'), 'refs', 'main')))
})

test.serial('CLI: --model and --adapter take Hub ids, with download progress on stderr', async (t) => {
  const o = setup(t)
  setEnv(t, { HF_ENDPOINT: o.endpoint, HF_HUB_CACHE: o.cacheDir })
  const io = capture()
  const code = await main(['generate', '--model', 'tiny/llama', '--adapter', 'tiny/lora', '--prompt', 'hello', '--max-tokens', '2', '--raw'], io)
  t.is(code, 0, io.errors())
  t.regex(io.errors(), /downloading tiny\/llama: model\.safetensors \(0\.\d MB\)/)
  t.regex(io.errors(), /downloading tiny\/lora: adapter_config\.json/)
  const bad = capture()
  t.is(await main(['info', '--model', 'tiny/ggufs'], bad), 1)
  t.regex(bad.errors(), /peft-node info: tiny\/ggufs: no such local file or folder; as a Hub repo id: tiny\/ggufs has 2 \.gguf files; pick one with the `file` option \(--file\)/)
})

test('CLI: on a terminal the download is one redrawn bar on stderr, closed by a newline', (t) => {
  const drawn: string[] = []
  const bar = downloadProgress({ ...capture(), errIsTTY: true, errWrite: (s) => drawn.push(s) })
  const p = { repoId: 'tiny/llama', file: 'model.safetensors', fileTotal: 2e6, total: 2e6 }
  bar({ ...p, fileBytes: 5e5, bytes: 5e5 })
  bar({ ...p, fileBytes: 1e6, bytes: 1e6 }) // within 100 ms of the last: not drawn
  bar({ ...p, fileBytes: 2e6, bytes: 2e6 })
  t.deepEqual(drawn, [
    '\r\x1b[K[######------------------] tiny/llama model.safetensors  0.5 MB/2.0 MB',
    '\r\x1b[K[########################] tiny/llama model.safetensors  2.0 MB/2.0 MB\n',
  ])
})
