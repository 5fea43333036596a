// A Hub repo id -> a local snapshot folder (or .gguf file) in the shared Hugging Face cache,
// before the local-path loaders run. Online: the repo's file list and commit (GET
// /api/models/{id}/revision/{rev}), then per file a HEAD on /{id}/resolve/{commit}/{file} for its
// ETag and size (as `hf_hub_download`), the missing blobs, the snapshot links and last the ref.
// Offline (HF_HUB_OFFLINE, `localFilesOnly`, or the Hub unreachable): the cached snapshot, if whole.
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { linkBlob, readRef, repoCache, snapshotFiles, writeRef, type RepoCache } from './cache'
import { downloadBlob, type FileMeta } from './download'
import { NetworkError, raiseForStatus, readBody, sendFollowing, type HubErrorContext } from './http'
import { indexShards, missingFromSnapshot, neededFiles, planFiles, type FilePlan, type RepoKind } from './select'
import { checkRevision, hubSettings, isCommit, isHubId, type HubOptions, type HubSettings } from './settings'

/**
 * `path` itself when it exists locally or is no Hub id (`org/name`); otherwise the repo's
 * snapshot, downloaded into the cache if needed.
 */
export async function resolvePretrained(path: string, kind: RepoKind, opts: HubOptions): Promise<string> {
  if (typeof path !== 'string' || existsSync(path) || !isHubId(path)) return path
  try {
    return await downloadFromHub(path, { ...opts, kind })
  } catch (e) {
    // `models/llama` may be a mistyped local folder as well as a Hub id: say both.
    const err = e as Error
    if (err.name !== 'AbortError') err.message = `${path}: no such local file or folder; as a Hub repo id: ${err.message}`
    throw err
  }
}

/** Downloads what loading `repoId` needs into the Hub cache; returns the snapshot folder (or the .gguf file in it). */
export async function downloadFromHub(repoId: string, opts: HubOptions & { kind?: RepoKind } = {}): Promise<string> {
  if (typeof repoId !== 'string' || !isHubId(repoId)) throw new Error(`repoId: expected a Hub repo id "org/name", found ${JSON.stringify(repoId)}`)
  const kind = opts.kind ?? 'model'
  if (kind !== 'model' && kind !== 'adapter') throw new Error(`kind: expected "model" or "adapter", found ${JSON.stringify(kind)}`)
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function') throw new Error('onProgress: expected a function')
  const s = hubSettings(opts)
  const revision = checkRevision(opts.revision)
  const repo = repoCache(s.cacheDir, repoId)
  const ctx: HubErrorContext = { repoId, revision, endpoint: s.endpoint, hasToken: s.token !== null }
  if (s.offline) return fromCache(repoId, kind, revision, repo, opts.file, 'offline mode is on (HF_HUB_OFFLINE or localFilesOnly)')
  let info: { commit: string; files: string[] }
  try {
    info = await repoInfo(s, ctx, opts.signal)
  } catch (e) {
    if (!(e instanceof NetworkError)) throw e
    return fromCache(repoId, kind, revision, repo, opts.file, `the Hub is unreachable (${e.message})`)
  }
  const plan = planFiles(repoId, kind, info.files, opts.file)
  const snapshot = repo.snapshot(info.commit)
  if (missingFromSnapshot(plan, snapshot, repoId).length > 0 || plan.optional.some((f) => !existsSync(join(snapshot, f)))) {
    await fetchSnapshot(s, { ...ctx, revision: info.commit }, repo, plan, info.files, opts)
  }
  writeRef(repo, revision, info.commit)
  return join(snapshot, plan.entry)
}

function fromCache(repoId: string, kind: RepoKind, revision: string, repo: RepoCache, file: string | undefined, why: string): string {
  const commit = readRef(repo, revision)
  const snapshot = commit && repo.snapshot(commit)
  if (!snapshot || !existsSync(snapshot)) throw new Error(`${repoId} (revision "${revision}") is not in the Hub cache ${repo.root}, and ${why}`)
  const plan = planFiles(repoId, kind, snapshotFiles(snapshot), file)
  const missing = missingFromSnapshot(plan, snapshot, repoId)
  if (missing.length > 0) throw new Error(`${repoId} (revision "${revision}") is only partly in the Hub cache (missing ${missing.join(', ')} in ${snapshot}), and ${why}`)
  return join(snapshot, plan.entry)
}

async function repoInfo(s: HubSettings, ctx: HubErrorContext, signal?: AbortSignal): Promise<{ commit: string; files: string[] }> {
  const url = `${s.endpoint}/api/models/${ctx.repoId}/revision/${encodeURIComponent(ctx.revision)}`
  const { res } = await sendFollowing({ url, token: s.token, signal, timeoutS: s.timeoutS }, true)
  await raiseForStatus(res, ctx)
  if (res.statusCode !== 200) throw new Error(`${url}: HTTP ${res.statusCode}, expected 200 with the repo's file list`)
  const body = (await readBody(res, 32 << 20, url)).toString('utf8')
  let json: { sha?: unknown; siblings?: unknown }
  try {
    json = JSON.parse(body)
  } catch {
    throw new Error(`${url}: expected JSON, found ${JSON.stringify(body.slice(0, 80))}`)
  }
  const files = Array.isArray(json.siblings) ? json.siblings.map((f: { rfilename?: unknown }) => f?.rfilename) : null
  if (typeof json.sha !== 'string' || !isCommit(json.sha) || !files || files.some((f) => typeof f !== 'string')) {
    throw new Error(`${url}: expected {"sha": <40-hex commit>, "siblings": [{"rfilename": ...}]}`)
  }
  return { commit: json.sha, files: files as string[] }
}

/** `hf_hub_download`'s HEAD: the ETag and size, from the redirect to the CDN for an LFS file. */
async function fileMeta(s: HubSettings, ctx: HubErrorContext, file: string, signal?: AbortSignal): Promise<FileMeta> {
  const url = `${s.endpoint}/${ctx.repoId}/resolve/${ctx.revision}/${file.split('/').map(encodeURIComponent).join('/')}`
  const { res, url: at } = await sendFollowing({ url, method: 'HEAD', token: s.token, signal, timeoutS: s.timeoutS }, true)
  res.resume()
  await raiseForStatus(res, { ...ctx, file })
  const h = res.headers
  const commit = h['x-repo-commit']
  if (commit !== undefined && commit !== ctx.revision) throw new Error(`${file}: the Hub answered for commit ${String(commit)}, asked for ${ctx.revision}`)
  const etag = String(h['x-linked-etag'] ?? h.etag ?? '').replace(/^W\//, '').replace(/"/g, '')
  if (!etag || !/^[\w.-]{1,128}$/.test(etag)) throw new Error(`${ctx.repoId}/${file}: the server sent no usable ETag (${JSON.stringify(etag)}); the file cannot be cached`)
  const redirected = (res.statusCode ?? 0) >= 300 && h.location !== undefined
  const sizeHeader = h['x-linked-size'] ?? (redirected ? undefined : h['content-length'])
  const size = sizeHeader === undefined ? null : Number(sizeHeader)
  const target = redirected ? new URL(String(h.location), at).href : at
  return { url: target, etag, size: size !== null && Number.isSafeInteger(size) && size >= 0 ? size : null, onHub: new URL(target).host === new URL(s.endpoint).host }
}

async function fetchSnapshot(s: HubSettings, ctx: HubErrorContext, repo: RepoCache, plan: FilePlan, listed: string[], opts: HubOptions): Promise<void> {
  const metas = new Map<string, FileMeta>()
  const head = async (files: string[]) => {
    for (const f of files) metas.set(f, await fileMeta(s, ctx, f, opts.signal))
  }
  const progress = { bytes: 0, total: 0 as number | null }
  const fetchAll = async (files: string[]) => {
    for (const f of files) {
      const meta = metas.get(f)!
      const blob = repo.blob(meta.etag)
      const before = progress.bytes
      if (!existsSync(blob)) {
        await downloadBlob({
          meta, blob, token: s.token, timeoutS: s.timeoutS, signal: opts.signal,
          onBytes: (n) => opts.onProgress?.({ repoId: ctx.repoId, file: f, fileBytes: n, fileTotal: meta.size, bytes: before + n, total: progress.total }),
        })
      }
      progress.bytes = before + (meta.size ?? 0)
      opts.onProgress?.({ repoId: ctx.repoId, file: f, fileBytes: meta.size ?? 0, fileTotal: meta.size, bytes: progress.bytes, total: progress.total })
    }
  }
  const sumSizes = () => [...metas.values()].reduce<number | null>((t, m) => (t === null || m.size === null ? null : t + m.size), 0)
  let files = neededFiles(plan, [])
  await head(files)
  progress.total = sumSizes()
  let shards: string[] = []
  if (plan.index) {
    await fetchAll([plan.index])
    shards = indexShards(repo.blob(metas.get(plan.index)!.etag), ctx.repoId)
    const absent = shards.filter((f) => !listed.includes(f))
    if (absent.length > 0) throw new Error(`${ctx.repoId}/${plan.index} names shards the repo does not have: ${absent.slice(0, 5).join(', ')}`)
    await head(shards)
    progress.total = sumSizes()
    files = neededFiles(plan, shards)
  }
  await fetchAll(files.filter((f) => f !== plan.index))
  // Every blob is whole: link them, config.json (adapter_config.json) last.
  for (const f of files) linkBlob(repo.blob(metas.get(f)!.etag), join(repo.snapshot(ctx.revision), f), s.symlinks)
}
