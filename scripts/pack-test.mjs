#!/usr/bin/env node
// `npm run test:package`: packs peft-node as it would be published and installs it the way a
// user would, with no registry and no compiler:
//   1. `npm pack` the root (its prepack rebuilds dist/ clean), then adds the optionalDependencies
//      that `napi prepublish` writes at release time, and `npm pack` the linux-x64-gnu platform
//      package with the built .node copied in (debug info stripped, as a release build has none).
//   2. `npm install --offline` both tarballs into a fresh temp dir, with PATH holding only node
//      and npm, an empty cache and a dead registry.
//   3. Runs scripts/smoke/smoke.mjs (import) and smoke.cjs (require) there: load the shared
//      fixture model, 3 training steps on a norm weight, generate; and a consumer `tsc` over the
//      installed types with moduleResolution node16 and bundler.
// Prints the tarball sizes and the smoke output; the last line is `N passed, N failed`.
import { spawnSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const fixture = process.env.PEFT_NODE_FIXTURE_MODEL ?? join(root, '..', 'shared', 'fixtures', 'hf-peft-tiny-llama', 'model')
const keep = process.argv.includes('--keep')
const release = process.argv.includes('--release') // also require the binary to meet MIN_GLIBC
const byVersion = (a, b) => {
  const [x, y] = [a, b].map((v) => v.split('.').map(Number))
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0)
  return 0
}
const work = mkdtempSync(join(tmpdir(), 'peft-node-pack-'))
const results = []
const mb = (n) => (n < 1e6 ? `${(n / 1e3).toFixed(1)} kB` : `${(n / 1e6).toFixed(2)} MB`)

function check(name, fn) {
  try {
    const note = fn()
    results.push([name, true])
    console.log(`ok   ${name}${note ? ` (${note})` : ''}`)
    return true
  } catch (e) {
    results.push([name, false])
    console.log(`FAIL ${name}\n     ${String(e?.stack ?? e).split('\n').join('\n     ')}`)
    return false
  }
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts })
  if (opts.echo) process.stdout.write((r.stdout ?? '') + (r.stderr ?? ''))
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}\n${r.stdout ?? ''}${r.stderr ?? ''}${r.error ?? ''}`)
  }
  return r.stdout
}

function finish() {
  const passed = results.filter(([, ok]) => ok).length
  const failed = results.length - passed
  if (!keep && failed === 0) rmSync(work, { recursive: true, force: true })
  else console.log(`(kept ${work})`)
  console.log(`\n${passed} passed, ${failed} failed`)
  process.exit(failed > 0 || passed === 0 ? 1 : 0)
}

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const platform = 'linux-x64-gnu'
const platformDir = join(root, 'npm', platform)
const binary = `${pkg.napi.binaryName}.${platform}.node`
const npmCli = process.env.npm_execpath && process.env.npm_execpath.endsWith('.js') ? process.env.npm_execpath : null
const npm = (args, opts) => (npmCli ? run(process.execPath, [npmCli, ...args], opts) : run('npm', args, opts))
let rootTgz
let platformTgz

console.log(`# peft-node ${pkg.version}: pack, install offline, smoke (work dir ${work})`)

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.log(`this test packs the ${platform} package; skipping on ${process.platform}-${process.arch}`)
  finish()
}

check('the built addon and the fixture model are there', () => {
  if (!existsSync(join(root, binary))) throw new Error(`${binary} is missing: run \`npm run build:native\` (or build:debug) first`)
  if (!existsSync(join(fixture, 'config.json'))) throw new Error(`no fixture model at ${fixture}`)
})

check('npm pack the root package', () => {
  const stage = join(work, 'stage')
  mkdirSync(stage)
  // prepack: clean dist/ and rebuild it (tsc + the ESM wrapper)
  const out = JSON.parse(npm(['pack', '--json', '--pack-destination', stage], { cwd: root }).match(/\[\s*\{[\s\S]*\]\s*$/)[0])[0]
  const files = out.files.map((f) => f.path).sort()
  const unexpected = files.filter(
    (f) => !/^(package\.json|README\.md|LICENSE|index\.js|index\.d\.ts|dist\/.+\.(js|mjs|d\.ts|d\.mts)|dist\/data\/.+\.json)$/.test(f),
  )
  if (unexpected.length) throw new Error(`unexpected files in the root tarball: ${unexpected.join(', ')}`)
  for (const f of ['dist/index.js', 'dist/index.mjs', 'dist/index.d.ts', 'dist/index.d.mts', 'index.js', 'index.d.ts', 'LICENSE', 'README.md']) {
    if (!files.includes(f)) throw new Error(`${f} is missing from the root tarball`)
  }
  for (const s of ['preinstall', 'install', 'postinstall']) if (pkg.scripts?.[s]) throw new Error(`the root package has an ${s} script`)
  // What `napi prepublish` does to package.json at release time: one optionalDependency per
  // target, at the same version. Repack with that manifest.
  run('tar', ['xzf', join(stage, out.filename), '-C', stage])
  const manifest = JSON.parse(readFileSync(join(stage, 'package', 'package.json'), 'utf8'))
  manifest.optionalDependencies = Object.fromEntries(
    ['linux-x64-gnu', 'linux-arm64-gnu', 'darwin-x64', 'darwin-arm64', 'win32-x64-msvc'].map((p) => [`${pkg.name}-${p}`, pkg.version]),
  )
  writeFileSync(join(stage, 'package', 'package.json'), JSON.stringify(manifest, null, 2) + '\n')
  const packed = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', work], { cwd: join(stage, 'package') }))[0]
  rootTgz = join(work, packed.filename)
  console.log(`     root tarball ${packed.filename}: ${mb(packed.size)} packed, ${mb(packed.unpackedSize)} unpacked, ${packed.entryCount} files`)
  return `${packed.entryCount} files`
})

check(`npm pack the ${platform} package`, () => {
  const dest = join(platformDir, binary)
  copyFileSync(join(root, binary), dest)
  try {
    const before = statSync(dest).size
    // A dev build carries DWARF; a release build (napi build --release --strip) has none.
    const strip = spawnSync('strip', ['--strip-debug', dest])
    const after = statSync(dest).size
    if (strip.status === 0 && after < before) console.log(`     stripped debug info from the copy: ${mb(before)} -> ${mb(after)}`)
    // The highest GLIBC_x.y symbol version the binary imports is the oldest glibc it loads on.
    const syms = spawnSync('objdump', ['-T', dest], { encoding: 'utf8', maxBuffer: 256 << 20 })
    const needs = [...new Set((syms.stdout ?? '').match(/GLIBC_[0-9.]+/g) ?? [])].map((v) => v.slice(6)).sort(byVersion).at(-1)
    const { MIN_GLIBC } = createRequire(import.meta.url)(join(root, 'dist', 'native.js'))
    if (needs) {
      const tooNew = byVersion(needs, MIN_GLIBC) > 0
      console.log(`     ${binary} needs glibc >= ${needs} (published builds promise >= ${MIN_GLIBC})`)
      if (tooNew && release) throw new Error(`${binary} needs glibc ${needs} > ${MIN_GLIBC}: build it with \`napi build --use-napi-cross\` (docs/releasing.md)`)
      if (tooNew) console.log('     note: a local build; release builds use --use-napi-cross (checked with --release)')
    }
    const meta = JSON.parse(readFileSync(join(platformDir, 'package.json'), 'utf8'))
    if (meta.version !== pkg.version) throw new Error(`npm/${platform} is ${meta.version}, the root is ${pkg.version}: run \`napi version\``)
    const packed = JSON.parse(npm(['pack', '--json', '--pack-destination', work], { cwd: platformDir }))[0]
    const files = packed.files.map((f) => f.path).sort()
    if (!files.includes(binary)) throw new Error(`${binary} is not in the tarball (${files.join(', ')})`)
    platformTgz = join(work, packed.filename)
    console.log(`     platform tarball ${packed.filename}: ${mb(packed.size)} packed, ${mb(packed.unpackedSize)} unpacked, ${packed.entryCount} files`)
  } finally {
    rmSync(dest, { force: true }) // never left behind (and *.node is git-ignored)
  }
})

const app = join(work, 'app')
check('npm install --offline both tarballs, no compiler on PATH', () => {
  if (!rootTgz || !platformTgz) throw new Error('nothing to install')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'peft-node-smoke', private: true, version: '0.0.0' }, null, 2))
  // PATH holds node and npm only: no cc, cargo, python, make, node-gyp.
  const bin = join(work, 'bin')
  mkdirSync(bin)
  symlinkSync(process.execPath, join(bin, 'node'))
  const npmJs = npmCli ?? realpathSync(run('sh', ['-c', 'command -v npm']).trim())
  symlinkSync(npmJs, join(bin, 'npm'))
  const env = { ...process.env, PATH: bin, npm_config_registry: 'http://127.0.0.1:9/', npm_config_cache: join(work, 'cache') }
  for (const k of Object.keys(env)) if (/^npm_(lifecycle|package|config_(?!registry|cache))/.test(k)) delete env[k]
  for (const tool of ['cc', 'gcc', 'cargo', 'rustc', 'make', 'python3', 'node-gyp']) {
    const found = spawnSync('/bin/sh', ['-c', `command -v ${tool}`], { env, encoding: 'utf8' })
    if (found.status === 0) throw new Error(`${tool} is reachable on the install PATH: ${found.stdout}`)
  }
  const out = run(join(bin, 'npm'), ['install', '--offline', '--no-audit', '--no-fund', rootTgz, platformTgz], { cwd: app, env })
  console.log(`     ${out.trim().split('\n').join('\n     ')}`)
  if (!existsSync(join(app, 'node_modules', pkg.name, 'package.json'))) throw new Error('peft-node was not installed')
  if (!existsSync(join(app, 'node_modules', `${pkg.name}-${platform}`, binary))) throw new Error(`${pkg.name}-${platform} was not installed`)
  if (existsSync(join(app, 'node_modules', `${pkg.name}-${platform}-cuda`))) throw new Error('the CUDA package was installed')
  const installed = JSON.parse(readFileSync(join(app, 'node_modules', pkg.name, 'package.json'), 'utf8'))
  if (installed.optionalDependencies?.[`${pkg.name}-${platform}`] !== pkg.version) throw new Error('the installed root does not list the platform package')
})

cpSync(join(root, 'scripts', 'smoke'), app, { recursive: true })
const smokeEnv = { ...process.env, RAYON_NUM_THREADS: process.env.RAYON_NUM_THREADS ?? '2' }
delete smokeEnv.NAPI_RS_NATIVE_LIBRARY_PATH
for (const [file, label] of [
  ['smoke.mjs', 'ESM'],
  ['smoke.cjs', 'CJS'],
]) {
  check(`smoke as ${label} (${file}): load the fixture, 3 training steps, generate`, () => {
    run(process.execPath, [file, fixture], { cwd: app, env: smokeEnv, echo: true })
  })
}

const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
for (const mode of ['node16', 'bundler']) {
  check(`consumer tsc, moduleResolution ${mode}, against the installed types`, () => {
    const cfg = JSON.parse(readFileSync(join(app, 'types', `tsconfig.${mode}.json`), 'utf8'))
    cfg.compilerOptions.typeRoots = [join(root, 'node_modules', '@types')]
    writeFileSync(join(app, 'types', `tsconfig.${mode}.json`), JSON.stringify(cfg, null, 2))
    run(process.execPath, [tsc, '-p', join(app, 'types', `tsconfig.${mode}.json`)], { cwd: join(app, 'types') })
    const trace = run(process.execPath, [tsc, '-p', join(app, 'types', `tsconfig.${mode}.json`), '--traceResolution'], { cwd: join(app, 'types') })
    const resolved = [...trace.matchAll(/Module name 'peft-node' was successfully resolved to '([^']+)'/g)].map((m) => m[1].replace(app + '/', ''))
    if (!resolved.length || resolved.some((f) => !f.startsWith('node_modules/peft-node/dist/'))) throw new Error(`peft-node resolved to ${resolved.join(', ')}`)
    return [...new Set(resolved)].join(', ')
  })
}

finish()
