// Packaging: the loader's checks and error messages (no prebuilt package, the CUDA package
// absent, an old Node), and the manifests the release publishes.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { LlamaModel } from '../src'
import { CUDA_PREBUILT, MIN_GLIBC, PREBUILT, checkNodeVersion, loadErrorMessage, minNodeVersion, platformName, wantsCuda } from '../src/native'
import { MODEL_DIR } from './helpers/fixtures'

const ROOT = join(__dirname, '..')
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))

test('checkNodeVersion: a Node below engines.node says which version is needed', (t) => {
  t.is(pkg.engines.node, '>= 18.18')
  const e = t.throws(() => checkNodeVersion('16.20.2'))
  t.regex(e!.message, /needs Node\.js >= 18\.18/)
  t.regex(e!.message, /this is Node\.js 16\.20\.2/)
  t.regex(e!.message, /Upgrade Node\.js/)
  t.throws(() => checkNodeVersion('18.17.9'))
  t.throws(() => checkNodeVersion('v18.9.0'))
  t.notThrows(() => checkNodeVersion('18.18.0'))
  t.notThrows(() => checkNodeVersion('20.20.2'))
  t.notThrows(() => checkNodeVersion('22.0.0'))
  t.notThrows(() => checkNodeVersion(), 'this Node is supported')
  t.throws(() => checkNodeVersion('20.1.0', '>=20.19.0'))
  t.throws(() => checkNodeVersion('19.0.0', '^20.3'))
  t.notThrows(() => checkNodeVersion('1.0.0', '*'), 'a range it cannot read is not enforced')
  t.is(minNodeVersion('>= 18.17'), '18.17')
  t.is(minNodeVersion('>=20.19.0'), '20.19.0')
  t.is(minNodeVersion('^18 || ^20'), null)
})

test('no prebuilt package for this platform: the message lists the prebuilt ones and how to build', (t) => {
  const msg = loadErrorMessage({ platform: 'freebsd-x64', nodeVersion: '20.0.0', glibc: null, cause: new Error('Unsupported OS: freebsd, architecture: x64') })
  t.regex(msg, /no prebuilt binary for freebsd-x64/)
  t.regex(msg, /linux-x64-gnu, linux-arm64-gnu, darwin-x64, darwin-arm64, win32-x64-msvc/)
  t.regex(msg, /npm run build:native/)
  t.regex(msg, /Cause: Unsupported OS/)
})

test('the platform package was not installed: the message says which one and how to get it', (t) => {
  const cause = new Error('Cannot find native binding.')
  ;(cause as Error & { cause: unknown }).cause = new Error("Cannot find module 'peft-node-darwin-arm64'")
  const msg = loadErrorMessage({ platform: 'darwin-arm64', nodeVersion: '20.0.0', glibc: null, cause })
  t.regex(msg, /peft-node-darwin-arm64@0\.1\.0 is not installed/)
  t.regex(msg, /optionalDependency/)
  t.regex(msg, /npm install peft-node-darwin-arm64@0\.1\.0/)
  t.notRegex(msg, /glibc/, 'glibc is only mentioned on Linux')
})

test('on Linux the message names the minimum glibc, and says when this one is too old', (t) => {
  t.is(MIN_GLIBC, '2.17')
  const old = loadErrorMessage({
    platform: 'linux-x64-gnu',
    nodeVersion: '20.0.0',
    glibc: '2.12',
    cause: new Error("/lib64/libc.so.6: version `GLIBC_2.14' not found (required by peft-node.linux-x64-gnu.node)"),
  })
  t.regex(old, /need glibc >= 2\.17; this system has glibc 2\.12, which is too old/)
  const ok = loadErrorMessage({ platform: 'linux-x64-gnu', nodeVersion: '20.0.0', glibc: '2.40', cause: new Error('boom') })
  t.regex(ok, /need glibc >= /)
  t.notRegex(ok, /too old/)
  const musl = loadErrorMessage({ platform: 'linux-x64-musl', nodeVersion: '20.0.0', glibc: null, cause: new Error('x') })
  t.regex(musl, /no prebuilt binary for linux-x64-musl/)
  t.regex(musl, /musl/)
})

test('platformName follows napi-rs', (t) => {
  t.is(platformName('linux', 'x64', '2.36'), 'linux-x64-gnu')
  t.is(platformName('linux', 'arm64', null), 'linux-arm64-musl')
  t.is(platformName('win32', 'x64', null), 'win32-x64-msvc')
  t.is(platformName('darwin', 'arm64', null), 'darwin-arm64')
  t.true(PREBUILT.includes(platformName()), 'this machine has a prebuilt package')
})

test('device "cuda" without the CUDA package: a clear error naming the package to install', async (t) => {
  t.true(wantsCuda('cuda') && wantsCuda('cuda:1'))
  t.false(wantsCuda('cpu') || wantsCuda(undefined))
  for (const device of ['cuda', 'cuda:1']) {
    const e = await t.throwsAsync(LlamaModel.fromPretrained(MODEL_DIR, { device }))
    t.regex(e!.message, /device "cuda" needs the opt-in CUDA package/)
    t.regex(e!.message, /npm install peft-node-linux-x64-gnu-cuda@0\.1\.0/)
  }
  const m = await LlamaModel.fromPretrained(MODEL_DIR, { device: 'cpu' })
  t.is(m.config.vocab_size, 384, 'the CPU build still loads after a failed CUDA request')
  m.dispose()
  const darwin = loadErrorMessage({ platform: 'darwin-arm64', nodeVersion: '20.0.0', glibc: null, cause: undefined, cuda: true })
  t.regex(darwin, /no CUDA build for darwin-arm64/)
  t.deepEqual(CUDA_PREBUILT, ['linux-x64-gnu'])
})

function child(code: string, env: Record<string, string>): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, ['--import=tsx', '-e', code], { cwd: ROOT, env: { ...process.env, ...env }, encoding: 'utf8' })
  return { status: r.status, out: r.stdout + r.stderr }
}

test('a binary that cannot be found: require succeeds, the first call rejects with the loader message', (t) => {
  const r = child(
    `const { LlamaModel } = require('./src');
     LlamaModel.fromPretrained(${JSON.stringify(MODEL_DIR)}).then(() => process.exit(3), (e) => { console.log(e.message); process.exit(2) })`,
    { NAPI_RS_NATIVE_LIBRARY_PATH: '/nonexistent/peft-node.linux-x64-gnu.node' },
  )
  t.is(r.status, 2, r.out)
  t.regex(r.out, /could not load the native addon of peft-node 0\.1\.0 for linux-x64-gnu/)
  t.regex(r.out, /Reinstall the matching package/)
  t.regex(r.out, /glibc >= /)
  t.regex(r.out, /\/nonexistent\/peft-node\.linux-x64-gnu\.node/)
})

test('PEFT_NODE_CUDA_BINARY pointing nowhere is reported with its path', (t) => {
  const r = child(
    `require('./src').LlamaModel.fromPretrained(${JSON.stringify(MODEL_DIR)}, { device: 'cuda' }).then(() => process.exit(3), (e) => { console.log(e.message); process.exit(2) })`,
    { PEFT_NODE_CUDA_BINARY: '/nonexistent/cuda.node' },
  )
  t.is(r.status, 2, r.out)
  t.regex(r.out, /CUDA build/)
  t.regex(r.out, /\/nonexistent\/cuda\.node/)
})

test('manifests: one npm/<platform> package per napi target, the CUDA package opt-in', (t) => {
  const dirs = readdirSync(join(ROOT, 'npm')).sort()
  t.deepEqual(dirs, [...PREBUILT, 'linux-x64-gnu-cuda'].sort())
  const triples: Record<string, string> = {
    'x86_64-unknown-linux-gnu': 'linux-x64-gnu',
    'aarch64-unknown-linux-gnu': 'linux-arm64-gnu',
    'x86_64-apple-darwin': 'darwin-x64',
    'aarch64-apple-darwin': 'darwin-arm64',
    'x86_64-pc-windows-msvc': 'win32-x64-msvc',
  }
  t.deepEqual(pkg.napi.targets.map((x: string) => triples[x]).sort(), [...PREBUILT].sort())
  for (const dir of dirs) {
    const p = JSON.parse(readFileSync(join(ROOT, 'npm', dir, 'package.json'), 'utf8'))
    t.is(p.name, `peft-node-${dir}`)
    t.is(p.version, pkg.version, `${dir} has the root version`)
    t.is(p.main, `peft-node.${dir}.node`)
    t.deepEqual(p.files, [p.main])
    t.deepEqual(p.os, [dir.split('-')[0]])
    t.deepEqual(p.cpu, [dir.split('-')[1]])
    if (dir.includes('-gnu')) t.deepEqual(p.libc, ['glibc'])
    t.falsy(p.scripts, 'no install scripts')
    t.true(existsSync(join(ROOT, 'npm', dir, 'README.md')))
  }
  t.falsy(pkg.optionalDependencies?.['peft-node-linux-x64-gnu-cuda'], 'the CUDA build is never installed by default')
  for (const s of ['preinstall', 'install', 'postinstall']) t.falsy(pkg.scripts[s], `no ${s} script`)
})

test('manifests: exports map with types for import and require; files ships only what users need', (t) => {
  t.deepEqual(pkg.exports['.'], {
    import: { types: './dist/index.d.mts', default: './dist/index.mjs' },
    require: { types: './dist/index.d.ts', default: './dist/index.js' },
  })
  t.is(pkg.main, 'dist/index.js')
  t.is(pkg.types, 'dist/index.d.ts')
  t.true(pkg.files.includes('index.js') && pkg.files.includes('index.d.ts'))
  t.false(pkg.files.some((f: string) => f.includes('.node') || f.startsWith('src') || f.startsWith('crates')))
  t.true(existsSync(join(ROOT, 'LICENSE')))
})

test('package-lock.json is the one npm writes: its root entry matches package.json', (t) => {
  // `npm install` rewrites the root entry from package.json; a stale one shows up as a diff in
  // every contributor's checkout (it lacked `bin` once).
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8'))
  const root = lock.packages['']
  t.is(lock.name, pkg.name)
  t.is(lock.version, pkg.version)
  for (const k of ['name', 'version', 'license', 'bin', 'engines', 'dependencies', 'devDependencies', 'optionalDependencies', 'peerDependencies']) {
    t.deepEqual(root[k], pkg[k], `packages[""].${k}`)
  }
})
