// Where the Hugging Face cache lives, which endpoint and token to use, and whether the network
// may be used: the environment variables Python's `huggingface_hub` reads (constants.py), so a
// cache and a login are shared with transformers, PEFT and the `hf` CLI.
import { existsSync, readFileSync, statSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'

/** One download's progress (bytes of this run; a resumed file starts at its kept size). */
export interface HubProgress {
  repoId: string
  /** The file being fetched, relative to the repo root. */
  file: string
  fileBytes: number
  /** null when the server sent no size. */
  fileTotal: number | null
  /** Bytes of every file to fetch in this call, done so far (cached files count as done). */
  bytes: number
  total: number | null
}

/** Options of `fromPretrained` when the path is a Hub repo id (`org/name`). */
export interface HubOptions {
  /** Branch, tag or 40-hex commit (default "main"). */
  revision?: string
  /** A `.gguf` file of the repo to load (needed when the repo has several). Models only. */
  file?: string
  /** Access token (default: `HF_TOKEN`, else the file `HF_TOKEN_PATH` or `$HF_HOME/token`). */
  token?: string
  /** The hub cache folder (default: `HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`). */
  cacheDir?: string
  /** The Hub's address (default: `HF_ENDPOINT`, else https://huggingface.co). */
  endpoint?: string
  /** Use the cache only, never the network (as `HF_HUB_OFFLINE=1`). */
  localFilesOnly?: boolean
  onProgress?: (p: HubProgress) => void
  /** Stops the download; the partial file is kept, and the next call resumes it. */
  signal?: AbortSignal
}

export interface HubSettings {
  cacheDir: string
  endpoint: string
  token: string | null
  offline: boolean
  symlinks: boolean
  /** Seconds without data before a request is given up (HF_HUB_DOWNLOAD_TIMEOUT, default 10). */
  timeoutS: number
}

/** Python's `_is_true`. */
const isTrue = (v: string | undefined) => ['1', 'ON', 'YES', 'TRUE'].includes((v ?? '').toUpperCase())

function hfHome(env: NodeJS.ProcessEnv): string {
  const xdg = env.XDG_CACHE_HOME || join(homedir(), '.cache')
  return env.HF_HOME || join(xdg, 'huggingface')
}

function storedToken(env: NodeJS.ProcessEnv): string | null {
  const file = env.HF_TOKEN_PATH || join(hfHome(env), 'token')
  // A token is a line of text: anything large is not one (and is not read whole).
  if (!existsSync(file) || !statSync(file).isFile() || statSync(file).size > 4096) return null
  return readFileSync(file, 'utf8').trim() || null
}

function stringOption(name: string, v: unknown): string | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'string' || v.length === 0) throw new Error(`${name}: expected a non-empty string, found ${JSON.stringify(v)}`)
  return v
}

export function hubSettings(opts: HubOptions, env: NodeJS.ProcessEnv = process.env): HubSettings {
  const cacheDir = stringOption('cacheDir', opts.cacheDir) ?? (env.HF_HUB_CACHE || join(hfHome(env), 'hub'))
  const endpoint = (stringOption('endpoint', opts.endpoint) ?? (env.HF_ENDPOINT || 'https://huggingface.co')).replace(/\/+$/, '')
  if (!/^https?:\/\/[^/]/.test(endpoint)) throw new Error(`endpoint (or HF_ENDPOINT): expected an http(s) URL, found "${endpoint}"`)
  const token = stringOption('token', opts.token) ?? (env.HF_TOKEN || null) ?? storedToken(env)
  if (opts.localFilesOnly !== undefined && typeof opts.localFilesOnly !== 'boolean') throw new Error(`localFilesOnly: expected a boolean, found ${typeof opts.localFilesOnly}`)
  const offline = opts.localFilesOnly === true || isTrue(env.HF_HUB_OFFLINE) || isTrue(env.TRANSFORMERS_OFFLINE)
  const timeout = Number(env.HF_HUB_DOWNLOAD_TIMEOUT ?? 10)
  return { cacheDir, endpoint, token, offline, symlinks: !isTrue(env.HF_HUB_DISABLE_SYMLINKS), timeoutS: timeout > 0 ? timeout : 10 }
}

/** The Hub's repo id rules (`org/name`: letters, digits, `-`, `_`, `.`; no `--` or `..`; at most 96 characters each). */
const PART = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$/

/**
 * Whether `s` reads as a Hub repo id. Only the `org/name` form is taken (a bare name like `gpt2`
 * is more often a mistyped local folder); a path that exists locally is never asked for.
 */
export function isHubId(s: string): boolean {
  const parts = s.split('/')
  return parts.length === 2 && parts.every((p) => PART.test(p) && !p.includes('--') && !p.includes('..'))
}

/** A revision: a branch, tag or commit, as a ref name (`refs/pr/1` allowed; no `..`, no control characters). */
export function checkRevision(rev: unknown): string {
  if (rev === undefined) return 'main'
  if (typeof rev !== 'string' || rev.length === 0 || rev.length > 255) throw new Error(`revision: expected a branch, tag or commit, found ${JSON.stringify(rev)}`)
  if (rev.split('/').some((p) => p === '' || p === '.' || p === '..') || /[\\\x00-\x1f]/.test(rev)) throw new Error(`revision: "${rev}" is not a valid branch, tag or commit name`)
  return rev
}

export const isCommit = (s: string) => /^[0-9a-f]{40}$/.test(s)
