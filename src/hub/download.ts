// One file into `blobs/<etag>`: written to `<etag>.incomplete` (the name Python's
// huggingface_hub used for resumable downloads), resumed with `Range` after a dropped
// connection or in a later run, checked against the ETag (sha256 of an LFS file, git's blob sha1
// of a small one) and the size, and only then renamed to the blob.
import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, statSync, unlinkSync } from 'node:fs'
import { dirname } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { NetworkError, sendFollowing } from './http'

export interface FileMeta {
  /** Where the bytes are (the CDN address for an LFS file). */
  url: string
  etag: string
  size: number | null
  /** Whether `url` is on the Hub, so the token goes with it. */
  onHub: boolean
}

export interface BlobDownload {
  meta: FileMeta
  blob: string
  token: string | null
  timeoutS: number
  signal?: AbortSignal
  /** Called with the bytes on disk so far. */
  onBytes(bytes: number): void
}

/** Tries after a dropped connection with no new bytes; any progress resets the count (as Python's http_get). */
const RETRIES = 5

export async function downloadBlob(d: BlobDownload): Promise<void> {
  const partial = `${d.blob}.incomplete`
  mkdirSync(dirname(d.blob), { recursive: true })
  let failures = 0
  for (;;) {
    let have = existsSync(partial) ? statSync(partial).size : 0
    if (d.meta.size !== null && have > d.meta.size) {
      unlinkSync(partial) // longer than the file: not a prefix of it
      have = 0
    }
    if (d.meta.size !== null && have === d.meta.size) break
    try {
      await fetchRange(d, partial, have)
      break
    } catch (e) {
      if (d.signal?.aborted) throw new Error(`download of ${d.meta.url} aborted; the partial file is kept at ${partial} and the next call resumes it`)
      if (!(e instanceof NetworkError)) throw e
      const now = existsSync(partial) ? statSync(partial).size : 0
      failures = now > have ? 1 : failures + 1
      if (failures > RETRIES) {
        throw new Error(`download of ${d.meta.url} interrupted (${e.message}) at ${now}${d.meta.size === null ? '' : ` of ${d.meta.size}`} bytes; the partial file is kept at ${partial} and the next call resumes it`)
      }
      await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** (failures - 1))))
    }
  }
  await verify(d, partial)
  renameSync(partial, d.blob)
}

/** Appends the bytes from `from` on; a server that ignores Range restarts the file. */
async function fetchRange(d: BlobDownload, partial: string, from: number): Promise<void> {
  const headers: Record<string, string> = from > 0 ? { range: `bytes=${from}-` } : {}
  const { res } = await sendFollowing({ url: d.meta.url, token: d.meta.onHub ? d.token : null, headers, signal: d.signal, timeoutS: d.timeoutS }, false)
  const status = res.statusCode ?? 0
  if (status === 416 && from > 0) {
    res.resume() // the partial file already holds every byte; verify() decides whether they are right
    return
  }
  if (status >= 500 || status === 429) {
    res.resume()
    throw new NetworkError(`HTTP ${status}`)
  }
  if (status !== 200 && status !== 206) {
    res.resume()
    throw new Error(`download of ${d.meta.url}: HTTP ${status}`)
  }
  const append = status === 206
  if (append && !String(res.headers['content-range'] ?? '').startsWith(`bytes ${from}-`)) {
    res.resume()
    throw new Error(`download of ${d.meta.url}: asked for bytes from ${from}, the server sent ${String(res.headers['content-range'])}`)
  }
  let bytes = append ? from : 0
  let got = 0
  res.on('data', (c: Buffer) => {
    bytes += c.length
    got += c.length
    d.onBytes(bytes)
  })
  // A response that ends early (socket closed) is an error of the stream, not a short success.
  const expected = res.headers['content-length'] === undefined ? null : Number(res.headers['content-length'])
  try {
    await pipeline(res, createWriteStream(partial, { flags: append ? 'a' : 'w' }))
  } catch (e) {
    if ((e as Error).name === 'AbortError' || d.signal?.aborted) throw e
    throw new NetworkError(`connection lost (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`)
  }
  if (expected !== null && got < expected) throw new NetworkError(`connection closed after ${got} of ${expected} bytes`)
}

/** The size and the ETag's hash, when the ETag is one (64 hex: sha256; 40 hex: git blob sha1). */
async function verify(d: BlobDownload, partial: string): Promise<void> {
  const size = statSync(partial).size
  const fail = (why: string) => {
    unlinkSync(partial) // wrong bytes cannot be resumed from: the next call starts over
    throw new Error(`download of ${d.meta.url} refused: ${why}; the corrupt file was deleted`)
  }
  if (d.meta.size !== null && size !== d.meta.size) fail(`${size} bytes, the server announced ${d.meta.size}`)
  const etag = d.meta.etag.toLowerCase()
  const kind = /^[0-9a-f]{64}$/.test(etag) ? 'sha256' : /^[0-9a-f]{40}$/.test(etag) ? 'sha1' : null
  if (!kind) return // an ETag that is no content hash (a server of another kind): the size was checked
  const hash = createHash(kind)
  if (kind === 'sha1') hash.update(`blob ${size}\0`)
  for await (const chunk of createReadStream(partial)) hash.update(chunk as Buffer)
  const got = hash.digest('hex')
  if (got !== etag) fail(`its ${kind === 'sha256' ? 'sha256' : 'git blob sha1'} is ${got}, the ETag says ${etag}`)
}
