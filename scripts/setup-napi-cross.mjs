#!/usr/bin/env node
// Puts the @napi-rs/cross-toolchain gcc toolchain (glibc 2.17 sysroot) where `napi build
// --use-napi-cross` looks for it, so the Linux binaries load on glibc >= 2.17.
//
// Why: @napi-rs/cli 3.10.6 resolves @napi-rs/cross-toolchain 1.0.5, which downloads
// `@napi-rs/cross-toolchain-<host>-target-<arch>@1.0.5`; only 1.0.0 of those is published, so the
// CLI's own download fails (and it also needs @napi-rs/lzma's native binding). The CLI skips the
// download when `~/.napi-rs/cross-toolchain/<version>/<triple>/package.json` exists: this script
// fills that folder from the newest published toolchain package, with npm pack + tar + xz.
//
//   node scripts/setup-napi-cross.mjs [x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu]
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { homedir, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const triple = process.argv[2] ?? 'x86_64-unknown-linux-gnu'
const short = { 'x86_64-unknown-linux-gnu': 'x86_64', 'aarch64-unknown-linux-gnu': 'aarch64', 'armv7-unknown-linux-gnueabihf': 'armv7' }[triple]
if (!short) throw new Error(`setup-napi-cross: unsupported target ${triple}`)
if (process.platform !== 'linux' || !['x64', 'arm64'].includes(process.arch)) throw new Error('setup-napi-cross: needs a Linux x64 or arm64 host')

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const fromCli = createRequire(createRequire(join(root, 'package.json')).resolve('@napi-rs/cli/package.json'))
const version = JSON.parse(readFileSync(fromCli.resolve('@napi-rs/cross-toolchain/package.json'), 'utf8')).version
const dest = join(homedir(), '.napi-rs', 'cross-toolchain', version, triple)
if (existsSync(join(dest, 'package.json'))) {
  console.log(`setup-napi-cross: ${dest} is ready`)
  process.exit(0)
}

const pkg = `@napi-rs/cross-toolchain-${process.arch}-target-${short}`
const npm = (...args) => execFileSync('npm', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim()
const published = JSON.parse(npm('view', pkg, 'versions', '--json'))
const list = Array.isArray(published) ? published : [published]
const pick = list.includes(version) ? version : list.filter((v) => v.split('.')[0] === version.split('.')[0]).at(-1)
if (!pick) throw new Error(`setup-napi-cross: no published ${pkg} for toolchain ${version} (published: ${list.join(', ')})`)
if (pick !== version) console.log(`setup-napi-cross: ${pkg}@${version} is not published; using ${pick}`)

const work = mkdtempSync(join(tmpdir(), 'napi-cross-'))
try {
  const tgz = npm('pack', `${pkg}@${pick}`, '--pack-destination', work).split('\n').at(-1)
  execFileSync('tar', ['xzf', join(work, tgz), '-C', work])
  mkdirSync(dest, { recursive: true })
  execFileSync('tar', ['xJf', join(work, 'package', `${triple}.tar.xz`), '-C', dest])
  if (!existsSync(join(dest, 'package.json'))) throw new Error(`setup-napi-cross: ${dest}/package.json missing after extraction`)
  console.log(`setup-napi-cross: ${pkg}@${pick} -> ${dest}`)
} finally {
  rmSync(work, { recursive: true, force: true })
}
