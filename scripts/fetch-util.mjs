// Shared by the model fetch scripts (scripts/fetch-*.mjs): hashing, running Python, and the
// "already there" check. No npm dependencies.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';

export const python = process.env.PYTHON || 'python3';

export function sha256(path) {
  return new Promise((ok, fail) => {
    const h = createHash('sha256');
    createReadStream(path).on('error', fail).on('data', (d) => h.update(d)).on('end', () => ok(h.digest('hex')));
  });
}

/** Runs `python args…`; returns its stdout, or throws with its stderr and `what` failed. */
export function runPython(args, what) {
  const r = spawnSync(python, args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    const detail = r.error ? r.error.message : (r.stderr || r.stdout).trim();
    throw new Error(`${what} failed (${python} ${args.join(' ')}):\n${detail}`);
  }
  return r.stdout;
}

/** True when `target` exists with the expected sha256 (logged as `tag: …`); a wrong one is fetched again. */
export async function alreadyPresent(target, expected, tag) {
  if (!existsSync(target)) return false;
  const got = await sha256(target);
  if (got === expected) {
    console.log(`${tag}: ${target} already present (sha256 ok), nothing to do`);
    return true;
  }
  console.log(`${tag}: ${target} has sha256 ${got}, expected ${expected}; fetching again`);
  return false;
}
