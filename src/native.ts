// The single place that loads the native addon: the napi-generated ../index.js (CPU build:
// a local .node, else the per-platform package peft-node-<platform>), or the opt-in CUDA
// build (peft-node-linux-x64-gnu-cuda) when a model asks for a cuda device.
/* eslint-disable @typescript-eslint/no-require-imports */
import { join } from 'node:path'
import type * as Native from '../index'

export type NativeBinding = typeof Native
export type NativeModel = Native.NativeModel
export type NativeTensor = Native.NativeTensor

interface PackageJson {
  version: string
  engines?: { node?: string }
  optionalDependencies?: Record<string, string>
}
const ROOT = join(__dirname, '..')
const pkg = require('../package.json') as PackageJson // literal paths: bundlers and file tracers follow them

/** Prebuilt CPU packages (napi.targets); the release pipeline publishes one per entry. */
export const PREBUILT = ['linux-x64-gnu', 'linux-arm64-gnu', 'darwin-x64', 'darwin-arm64', 'win32-x64-msvc']
/** Platforms with a CUDA package. */
export const CUDA_PREBUILT = ['linux-x64-gnu']
/**
 * The oldest glibc the published Linux binaries load on: they are linked against the glibc 2.17
 * sysroot of napi-rs's cross toolchain (`napi build --use-napi-cross`, docs/releasing.md);
 * `npm run test:package -- --release` checks the GLIBC_x.y symbol versions a .node imports.
 * A plain build on this Debian 12 machine needs 2.34.
 */
export const MIN_GLIBC = '2.17'

// ---------------------------------------------------------------------------------------------
// Node version

function parseVersion(v: string): number[] {
  return v
    .replace(/^v/, '')
    .split('.')
    .map((x) => parseInt(x, 10) || 0)
}

function lessThan(a: number[], b: number[]): boolean {
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) < (b[i] ?? 0)
  return false
}

/** The lower bound of an `engines.node` range of the form `>= 18.17` (or `>=18.17.0`, `^18.17`). */
export function minNodeVersion(range: string): string | null {
  const m = /^\s*(?:>=|\^)\s*v?(\d+(?:\.\d+){0,2})\s*$/.exec(range)
  return m ? m[1] : null
}

/** Throws an Error saying what to do when `version` (default: this Node) is below `engines.node`. */
export function checkNodeVersion(version: string = process.versions.node, range: string | undefined = pkg.engines?.node): void {
  const min = range ? minNodeVersion(range) : null
  if (!min || !lessThan(parseVersion(version), parseVersion(min))) return
  const electron = process.versions.electron ? ` (Electron ${process.versions.electron})` : ''
  throw new Error(
    `peft-node ${pkg.version} needs Node.js ${range} (package.json "engines"), but this is Node.js ${version}${electron}. ` +
      `Upgrade Node.js (for example \`nvm install --lts\`)${electron ? ', or use an Electron release built on a newer Node' : ''}.`,
  )
}

// ---------------------------------------------------------------------------------------------
// Platform and error messages

/** The glibc this process runs on, or null (musl, or not Linux). */
export function glibcVersion(): string | null {
  if (process.platform !== 'linux') return null
  try {
    if (process.report && 'excludeNetwork' in process.report) process.report.excludeNetwork = true
    const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined
    return report?.header?.glibcVersionRuntime ?? null
  } catch {
    return null
  }
}

/** napi-rs's platform name: `linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`, ... */
export function platformName(platform: string = process.platform, arch: string = process.arch, glibc: string | null = glibcVersion()): string {
  if (platform === 'linux') return `${platform}-${arch}-${glibc ? 'gnu' : 'musl'}`
  if (platform === 'win32') return `${platform}-${arch}-msvc`
  return `${platform}-${arch}`
}

function causeMessages(e: unknown): string[] {
  const out: string[] = []
  for (let c = e as { message?: unknown; cause?: unknown } | undefined, n = 0; c && n < 20; c = c.cause as typeof c, n++) {
    out.push(typeof c.message === 'string' ? c.message : String(c))
  }
  return out
}

export interface LoadErrorInfo {
  /** napi-rs platform name, e.g. linux-x64-gnu */
  platform: string
  nodeVersion: string
  /** glibc at run time (Linux gnu), or null */
  glibc: string | null
  /** what the loader threw (its `cause` chain is read too) */
  cause: unknown
  cuda?: boolean
  version?: string
}

/** The message of the Error thrown when no native binary could be loaded: what failed and what to do. */
export function loadErrorMessage(info: LoadErrorInfo): string {
  const version = info.version ?? pkg.version
  const causes = causeMessages(info.cause)
  const flavor = info.cuda ? 'the CUDA build of' : 'the native addon of'
  const pkgName = `peft-node-${info.platform}${info.cuda ? '-cuda' : ''}`
  const supported = info.cuda ? CUDA_PREBUILT : PREBUILT
  const lines = [`peft-node: could not load ${flavor} peft-node ${version} for ${info.platform} (Node ${info.nodeVersion}).`]
  const notFound = new RegExp(`Cannot find module ['"]${pkgName}(/[^'"]*)?['"]`)
  const missing = causes.some((m) => notFound.test(m))
  if (!supported.includes(info.platform)) {
    lines.push(
      info.cuda
        ? `There is no CUDA build for ${info.platform} (CUDA builds: ${supported.join(', ')}). Use device "cpu", or build from source with the cuda feature.`
        : `There is no prebuilt binary for ${info.platform} (prebuilt: ${supported.join(', ')}). ` +
            'Build it from source (Rust stable): clone the repository, run `npm run build:native`, and point NAPI_RS_NATIVE_LIBRARY_PATH at the .node it writes.',
    )
  } else if (info.cuda && missing) {
    lines.push(
      `device "cuda" needs the opt-in CUDA package, which is not installed: run \`npm install ${pkgName}@${version}\` ` +
        '(it needs an NVIDIA driver and the CUDA 13 runtime libraries: cudart, cuBLAS, cuRAND, NVRTC).',
    )
  } else if (missing) {
    lines.push(
      `The prebuilt package ${pkgName}@${version} is not installed. It is an optionalDependency of peft-node, so it is skipped by ` +
        '`--omit=optional`/`--no-optional`, and by a lockfile made on another platform (npm bug 4828). ' +
        `Run \`npm install ${pkgName}@${version}\`, or delete node_modules and package-lock.json and install again.`,
    )
  } else if (info.cuda && causes.some((m) => /lib(cuda|cudart|cublas|curand|nvrtc)/i.test(m))) {
    lines.push(
      'The CUDA package is installed but its CUDA libraries were not found: install an NVIDIA driver and the CUDA 13 runtime ' +
        '(cudart, cuBLAS, cuBLASLt, cuRAND, NVRTC) and put their lib folder on LD_LIBRARY_PATH.',
    )
  } else {
    lines.push(`Reinstall the matching package (\`npm install ${pkgName}@${version}\`), or build from source with \`npm run build:native\`.`)
  }
  if (info.platform.startsWith('linux-')) {
    if (info.platform.endsWith('-musl')) {
      lines.push('This looks like a musl system (Alpine): the Linux binaries are built for glibc, so use a glibc-based image (Debian, Ubuntu) or build from source.')
    } else {
      const old = info.glibc && lessThan(parseVersion(info.glibc), parseVersion(MIN_GLIBC))
      const glibcHit = causes.some((m) => m.includes('GLIBC_'))
      lines.push(
        `The Linux binaries need glibc >= ${MIN_GLIBC}; this system has glibc ${info.glibc ?? 'unknown'}` +
          (old || glibcHit ? ', which is too old: upgrade the OS (e.g. Debian 12, Ubuntu 22.04, RHEL 9) or build from source.' : '.'),
      )
    }
  }
  if (causes.length) lines.push(`Cause: ${causes.join(' <- ')}`)
  return lines.join('\n')
}

// ---------------------------------------------------------------------------------------------
// Loading

let cpuBinding: NativeBinding | undefined
let cudaBinding: NativeBinding | undefined

function loadCpu(): NativeBinding {
  try {
    return require('../index.js') as NativeBinding
  } catch (e) {
    throw new Error(loadErrorMessage({ platform: platformName(), nodeVersion: process.versions.node, glibc: glibcVersion(), cause: e }), { cause: e })
  }
}

function loadCuda(): NativeBinding {
  const platform = platformName()
  const name = `peft-node-${platform}-cuda`
  const info = { platform, nodeVersion: process.versions.node, glibc: glibcVersion(), cuda: true }
  if (!CUDA_PREBUILT.includes(platform) && !process.env.PEFT_NODE_CUDA_BINARY) {
    throw new Error(loadErrorMessage({ ...info, cause: undefined }))
  }
  const errors: unknown[] = []
  // 1. an explicit path, 2. a local build next to index.js (development), 3. the opt-in package.
  const candidates = [process.env.PEFT_NODE_CUDA_BINARY, join(ROOT, `peft-node.${platform}-cuda.node`)].filter((p): p is string => !!p)
  for (const p of candidates) {
    try {
      return require(p) as NativeBinding
    } catch (e) {
      // A missing local file is expected; anything else (a missing libcudart) is the real story.
      if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND' || p === process.env.PEFT_NODE_CUDA_BINARY) errors.push(e)
    }
  }
  try {
    const installed = (require(`${name}/package.json`) as PackageJson).version
    if (installed !== pkg.version) {
      throw new Error(`${name}@${installed} is installed but peft-node is ${pkg.version}; run \`npm install ${name}@${pkg.version}\``)
    }
    return require(name) as NativeBinding
  } catch (e) {
    errors.push(e)
  }
  const cause = errors.reduceRight<Error | undefined>((prev, e) => {
    const err = new Error((e as Error)?.message ?? String(e))
    if (prev) err.cause = prev
    return err
  }, undefined)
  throw new Error(loadErrorMessage({ ...info, cause }), { cause })
}

/**
 * The native binding. The CPU build by default; `{ cuda: true }` loads the opt-in CUDA build
 * (which runs CPU work too) and makes it the binding `native` uses from then on, so handles
 * created afterwards (abort handles, tensors) come from the same addon as the CUDA model.
 * The CUDA package is never required unless asked for.
 */
export function loadNative(opts: { cuda?: boolean } = {}): NativeBinding {
  checkNodeVersion()
  checkThreadsVariable()
  if (opts.cuda) return (cudaBinding ??= cancelOnExit(loadCuda()))
  return cudaBinding ?? (cpuBinding ??= cancelOnExit(loadCpu()))
}

/**
 * `PEFT_NODE_NUM_THREADS` sizes the addon's one compute pool when it loads (default: the cores
 * available); checked here first, since the addon cannot throw while it loads.
 */
export function checkThreadsVariable(value: string | undefined = process.env.PEFT_NODE_NUM_THREADS): void {
  if (value !== undefined && !/^\s*[1-9]\d*\s*$/.test(value)) {
    throw new Error(`PEFT_NODE_NUM_THREADS: expected a positive whole number of threads, found ${JSON.stringify(value)}`)
  }
}

/** Threads in the compute pool every kernel and matmul shares (`PEFT_NODE_NUM_THREADS`). */
export function numThreads(): number {
  return loadNative().numThreads()
}

/**
 * Node waits for the native thread pool before a process exits, so `process.exit()` during a
 * generate waited for the whole generation: on 'exit', running native loops are told to stop at
 * their next step.
 */
function cancelOnExit(binding: NativeBinding): NativeBinding {
  process.once('exit', () => binding.cancelNativeWork())
  return binding
}

/** True when `device` ("cuda", "cuda:1") needs the CUDA build. */
export function wantsCuda(device: string | undefined): boolean {
  return typeof device === 'string' && (device === 'cuda' || device.startsWith('cuda:'))
}

checkNodeVersion()

/**
 * The active binding, loaded on first use (so `require('peft-node')` itself never dlopens the
 * addon, and a CUDA-only program never loads the CPU one).
 */
export const native: NativeBinding = new Proxy({} as NativeBinding, {
  get: (_t, key) => Reflect.get(loadNative(), key),
  has: (_t, key) => Reflect.has(loadNative(), key),
})
