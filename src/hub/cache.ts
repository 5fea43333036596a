// The cache layout of Python's `huggingface_hub` (file_download.py), so that either side reads
// what the other wrote:
//   <cache>/models--org--name/blobs/<etag>             the bytes (etag: sha256 for LFS files, git sha1 otherwise)
//   <cache>/models--org--name/refs/<revision>          the 40-hex commit that branch/tag pointed to
//   <cache>/models--org--name/snapshots/<commit>/<f>   relative symlink -> ../../blobs/<etag>
import { copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { isCommit } from './settings'

export interface RepoCache {
  root: string
  blob(etag: string): string
  snapshot(commit: string): string
}

export function repoCache(cacheDir: string, repoId: string): RepoCache {
  const root = join(cacheDir, ['models', ...repoId.split('/')].join('--'))
  return { root, blob: (etag) => join(root, 'blobs', etag), snapshot: (commit) => join(root, 'snapshots', commit) }
}

/** A file name from the server or the caller, checked before it is joined onto the cache folder. */
export function checkRepoPath(name: string, what: string): string {
  const bad = name.length === 0 || name.length > 1000 || name.startsWith('/') || /[\\\x00-\x1f:]/.test(name) || name.split('/').some((p) => p === '' || p === '.' || p === '..')
  if (bad) throw new Error(`${what}: "${name}" is not a file path inside a repo`)
  return name
}

/** The commit `revision` points to in the cache, or null. */
export function readRef(repo: RepoCache, revision: string): string | null {
  if (isCommit(revision)) return revision
  const file = join(repo.root, 'refs', revision)
  if (!existsSync(file) || !statSync(file).isFile() || statSync(file).size > 100) return null
  const commit = readFileSync(file, 'utf8').trim()
  return isCommit(commit) ? commit : null
}

/** Written only once a snapshot is complete: a branch never points at a half-downloaded commit. */
export function writeRef(repo: RepoCache, revision: string, commit: string): void {
  if (revision === commit) return
  const file = join(repo.root, 'refs', revision)
  mkdirSync(dirname(file), { recursive: true })
  const tmp = `${file}.${process.pid}.tmp`
  writeFileSync(tmp, commit)
  renameSync(tmp, file)
}

/**
 * Puts a blob at its snapshot path: a relative symlink (as Python makes it); with
 * HF_HUB_DISABLE_SYMLINKS, or where symlinks are refused (Windows without developer mode), a
 * copy, as Python then does.
 */
export function linkBlob(blob: string, pointer: string, symlinks: boolean): void {
  mkdirSync(dirname(pointer), { recursive: true })
  if (lstatExists(pointer)) unlinkSync(pointer) // a dangling link left by a removed blob
  if (symlinks) {
    try {
      symlinkSync(relative(dirname(pointer), blob), pointer)
      return
    } catch (e) {
      if (!['EPERM', 'EACCES', 'ENOTSUP', 'EOPNOTSUPP'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e
    }
  }
  const tmp = `${pointer}.${process.pid}.tmp`
  copyFileSync(blob, tmp)
  renameSync(tmp, pointer)
}

function lstatExists(p: string): boolean {
  try {
    lstatSync(p)
    return true
  } catch {
    return false
  }
}

/** The files of a snapshot (relative paths) whose targets exist: a dangling link is no file. */
export function snapshotFiles(dir: string): string[] {
  if (!existsSync(dir)) return []
  const out: string[] = []
  const walk = (sub: string, depth: number) => {
    if (depth > 16) return
    for (const e of readdirSync(join(dir, sub), { withFileTypes: true })) {
      const rel = sub ? `${sub}/${e.name}` : e.name
      if (e.isDirectory()) walk(rel, depth + 1)
      else if (existsSync(join(dir, rel)) && statSync(join(dir, rel)).isFile()) out.push(rel)
    }
  }
  walk('', 0)
  return out
}
