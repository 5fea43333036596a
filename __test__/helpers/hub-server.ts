// A local stand-in for the Hugging Face Hub, for hub.spec.ts and the by-hand Python check.
// It serves what `huggingface_hub` and peft-node use, with the Hub's headers:
//   GET  /api/models/{org}/{name}/revision/{rev}   {"sha", "siblings": [{"rfilename"}]}
//   GET  /api/models/{org}/{name}/tree/{rev}       [{"type", "path", "oid", "size", "lfs"}] (Python's snapshot_download)
//   HEAD|GET /{org}/{name}/resolve/{rev}/{file}     X-Repo-Commit; a small file: 200, ETag = git blob sha1;
//        an LFS file (*.safetensors, *.gguf): 302 to the CDN server (another host) with X-Linked-Etag (sha256) and X-Linked-Size
//   GET  (CDN) /{org}/{name}/{sha256}               the bytes; honours Range
// Errors as the Hub sends them: unknown or private repo 401 + X-Error-Code RepoNotFound, unknown
// revision 404 RevisionNotFound, unknown file 404 EntryNotFound.
import { createHash } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'

export interface FakeRepo {
  /** ref name (branch or tag) -> commit */
  refs: Record<string, string>
  /** commit -> files */
  commits: Record<string, Record<string, Buffer>>
  /** When set, only this token may read the repo. */
  token?: string
}

/** Faults name files as `org/name/file`, so tests running at once do not meet each other's. */
export interface Faults {
  /** CDN: the first GET of these files sends half the bytes, then drops the connection. */
  dropOnce: Set<string>
  /** CDN: every GET of these files drops after half (or, resumed, after no new bytes). */
  dropAlways: Set<string>
  /** The ETag the Hub announces for these files is wrong (the bytes do not match it). */
  badEtag: Set<string>
}

export interface LoggedRequest {
  method: string
  url: string
  host: 'hub' | 'cdn'
  range?: string
  authorization?: string
}

export interface HubServer {
  endpoint: string
  repos: Map<string, FakeRepo>
  faults: Faults
  log: LoggedRequest[]
  close(): Promise<void>
}

const isLfs = (f: string) => /\.(safetensors|gguf)$/.test(f)
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
export const gitSha1 = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex')

/** A commit id made from a label, so tests can name them. */
export const commitOf = (label: string) => createHash('sha1').update(label).digest('hex')

function listen(handler: http.RequestListener, host: string): Promise<http.Server> {
  const server = http.createServer(handler)
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, host, () => resolve(server))
  })
}

/**
 * `cdnHost`: the CDN's address. peft-node counts another port as another host; Python's
 * huggingface_hub compares host names only, so the Python check puts the CDN on 127.0.0.2 (Linux).
 */
export async function startHub(cdnHost = '127.0.0.1'): Promise<HubServer> {
  const repos = new Map<string, FakeRepo>()
  const faults: Faults = { dropOnce: new Set(), dropAlways: new Set(), badEtag: new Set() }
  const log: LoggedRequest[] = []
  const blobs = new Map<string, { name: string; data: Buffer }>()
  const dropped = new Set<string>()
  const note = (req: http.IncomingMessage, host: 'hub' | 'cdn') =>
    log.push({ method: req.method ?? '', url: req.url ?? '', host, range: req.headers.range, authorization: req.headers.authorization })

  const cdn = await listen((req, res) => {
    note(req, 'cdn')
    const blob = blobs.get((req.url ?? '').slice(1))
    if (!blob) return void res.writeHead(404).end()
    const size = blob.data.length
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
    const from = m ? Number(m[1]) : 0
    if (from >= size && m) return void res.writeHead(416, { 'content-range': `bytes */${size}` }).end()
    const body = blob.data.subarray(from)
    res.writeHead(m ? 206 : 200, { 'content-length': body.length, ...(m ? { 'content-range': `bytes ${from}-${size - 1}/${size}` } : {}), 'accept-ranges': 'bytes' })
    const drop = (faults.dropOnce.has(blob.name) && !dropped.has(blob.name)) || faults.dropAlways.has(blob.name)
    if (!drop || req.method === 'HEAD') return void res.end(req.method === 'HEAD' ? undefined : body)
    dropped.add(blob.name)
    // Half of what is left (nothing when little is left), then the socket is cut mid-body.
    res.write(body.subarray(0, faults.dropAlways.has(blob.name) && from > 0 ? 0 : Math.floor(body.length / 2)), () => res.socket?.destroy())
  }, cdnHost)
  const cdnBase = `http://${cdnHost}:${(cdn.address() as AddressInfo).port}`

  const hub = await listen((req, res) => {
    note(req, 'hub')
    const url = decodeURI((req.url ?? '').split('?')[0])
    const error = (status: number, code: string, message: string) => res.writeHead(status, { 'x-error-code': code, 'x-error-message': message }).end()
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/(revision|tree)\/(.+)$/.exec(url)
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url)
    const [, id, revRaw, file] = api ? [api[0], api[1], api[3]] : resolve ?? []
    const repo = id ? repos.get(id) : undefined
    if (!api && !resolve) return void res.writeHead(404).end()
    if (!repo || (repo.token && req.headers.authorization !== `Bearer ${repo.token}`)) return error(401, 'RepoNotFound', 'Repository not found')
    const rev = decodeURIComponent(revRaw ?? '')
    const commit = repo.commits[rev] ? rev : repo.refs[rev]
    if (!commit) return error(404, 'RevisionNotFound', `Invalid rev id: ${rev}`)
    const files = repo.commits[commit]
    if (api?.[2] === 'tree') {
      const tree = Object.entries(files).map(([path, b]) => ({ type: 'file', path, oid: gitSha1(b), size: b.length, ...(isLfs(path) ? { lfs: { oid: sha256(b), size: b.length, pointerSize: 130 } } : {}) }))
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(tree))
    }
    if (api) {
      const body = JSON.stringify({ id, sha: commit, siblings: Object.keys(files).map((rfilename) => ({ rfilename })) })
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(body)
    }
    const data = files[file]
    if (!data) return void res.writeHead(404, { 'x-error-code': 'EntryNotFound', 'x-repo-commit': commit }).end()
    const wrong = faults.badEtag.has(`${id}/${file}`) ? '0'.repeat(isLfs(file) ? 64 : 40) : null
    if (isLfs(file)) {
      const hash = sha256(data)
      blobs.set(`${id}/${hash}`, { name: `${id}/${file}`, data })
      return void res.writeHead(302, { location: `${cdnBase}/${id}/${hash}`, 'x-repo-commit': commit, 'x-linked-etag': `"${wrong ?? hash}"`, 'x-linked-size': data.length, etag: '"not-the-file-etag"' }).end()
    }
    res.writeHead(200, { etag: `"${wrong ?? gitSha1(data)}"`, 'x-repo-commit': commit, 'content-length': data.length })
    res.end(req.method === 'HEAD' ? undefined : data)
  }, '127.0.0.1')
  const endpoint = `http://127.0.0.1:${(hub.address() as AddressInfo).port}`
  const close = (s: http.Server) => new Promise<void>((r) => {
    s.closeAllConnections?.()
    s.close(() => r())
  })
  return { endpoint, repos, faults, log, close: async () => void (await Promise.all([close(hub), close(cdn)])) }
}
