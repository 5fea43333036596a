// The few HTTP requests the Hub download needs, on node:http/https (no dependency, no fetch
// experimental warning on Node 18, and no transparent gzip that would hide the real size).
// Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound,
// GatedRepo) turned into a sentence, as `huggingface_hub.utils.hf_raise_for_status` does.
import http from 'node:http'
import https from 'node:https'
import type { IncomingMessage } from 'node:http'

export interface Request {
  url: string
  method?: 'GET' | 'HEAD'
  token?: string | null
  headers?: Record<string, string>
  signal?: AbortSignal
  timeoutS: number
}

/** A failure to reach the server at all (as opposed to an HTTP error answer). */
export class NetworkError extends Error {}

/** One request, no redirects followed; the body is left unread for the caller. */
export function send(req: Request): Promise<IncomingMessage> {
  const url = new URL(req.url)
  const lib = url.protocol === 'https:' ? https : http
  const headers: Record<string, string> = { 'user-agent': 'peft-node', 'accept-encoding': 'identity', ...req.headers }
  if (req.token) headers.authorization = `Bearer ${req.token}`
  return new Promise((resolve, reject) => {
    const r = lib.request(url, { method: req.method ?? 'GET', headers, signal: req.signal, timeout: req.timeoutS * 1000 }, resolve)
    r.on('timeout', () => r.destroy(new NetworkError(`no answer from ${url.host} in ${req.timeoutS} s (HF_HUB_DOWNLOAD_TIMEOUT)`)))
    r.on('error', (e: NodeJS.ErrnoException) => {
      if (e.name === 'AbortError') reject(e)
      else reject(e instanceof NetworkError ? e : new NetworkError(`could not reach ${url.host}: ${e.code ?? e.message}`))
    })
    r.end()
  })
}

const sameHub = (a: URL, b: URL) => a.host === b.host

/**
 * Follows redirects. `stayOnHub` stops at the first redirect to another host (the Hub sends LFS
 * files to a CDN: the file's metadata is on that redirect, and the token must not leave the Hub);
 * otherwise redirects are followed everywhere, without the token once off the Hub.
 */
export async function sendFollowing(req: Request, stayOnHub: boolean): Promise<{ res: IncomingMessage; url: string }> {
  const start = new URL(req.url)
  let url = req.url
  for (let hop = 0; hop < 10; hop++) {
    const token = sameHub(new URL(url), start) ? req.token : null
    const res = await send({ ...req, url, token })
    const location = res.headers.location
    if (!(res.statusCode && res.statusCode >= 300 && res.statusCode < 400 && location)) return { res, url }
    const next = new URL(location, url)
    if (stayOnHub && !sameHub(next, start)) return { res, url }
    res.resume()
    url = next.href
  }
  throw new NetworkError(`${req.url}: more than 10 redirects`)
}

/** Reads a body of at most `max` bytes (a JSON answer or an error message). */
export function readBody(res: IncomingMessage, max: number, what: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    res.on('data', (c: Buffer) => {
      size += c.length
      if (size > max) {
        res.destroy()
        reject(new Error(`${what}: the answer is larger than ${max} bytes`))
      } else chunks.push(c)
    })
    res.on('end', () => resolve(Buffer.concat(chunks)))
    res.on('error', (e) => reject(new NetworkError(`${what}: connection lost (${e.message})`)))
  })
}

export interface HubErrorContext {
  repoId: string
  revision: string
  file?: string
  endpoint: string
  hasToken: boolean
}

/** Throws a clear Error for a non-2xx answer; returns for 2xx and 3xx. */
export async function raiseForStatus(res: IncomingMessage, c: HubErrorContext): Promise<void> {
  const status = res.statusCode ?? 0
  if (status < 400) return
  const code = String(res.headers['x-error-code'] ?? '')
  const message = String(res.headers['x-error-message'] ?? '') || (await readBody(res, 4096, 'error').catch(() => Buffer.alloc(0))).toString('utf8').slice(0, 300)
  const where = `${c.repoId} on ${c.endpoint}`
  const auth = c.hasToken ? 'the token was refused or lacks access' : 'no token was given: set HF_TOKEN, log in with `hf auth login`, or pass `token`'
  let text: string
  if (code === 'RevisionNotFound') text = `revision "${c.revision}" not found in ${where}`
  else if (code === 'EntryNotFound') text = `${c.file ?? 'a file'} not found in ${where} at revision "${c.revision}"`
  else if (code === 'GatedRepo') text = `${where} is gated: accept its conditions on the Hub, and use a token of that account (${auth})`
  else if (code === 'RepoNotFound' || status === 401) text = `Hub repo ${where} not found, or private (HTTP ${status}; ${auth})`
  else if (status === 404) text = `${c.file ?? c.repoId} not found on ${c.endpoint} (HTTP 404)`
  else if (status === 403) text = `access to ${where} refused (HTTP 403; ${auth})`
  else text = `${where}: HTTP ${status}`
  throw new HubHttpError(`${text}${message && !text.includes(message) ? ` [${message}]` : ''}`, status, code)
}

export class HubHttpError extends Error {
  constructor(message: string, readonly status: number, readonly code: string) {
    super(message)
  }
}
