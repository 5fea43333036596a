#!/usr/bin/env bash
# Bundles what the GPU check needs into one tarball (< 64 MiB) to carry to a GPU machine:
# the CUDA test binaries (suite, which holds fixture_base, lora and ops, and gpu_check; stripped), the HF/PEFT
# fixtures, scripts/gpu-check.sh, scripts/gpu_bench_torch.py and a MANIFEST.
#
#   scripts/cuda/pack-gpu-check.sh        # builds the test binaries first if needed
#   -> target-cuda/peft-gpu-check.tar.xz  (run: tar xJf ... && peft-gpu-check/gpu-check.sh)
# Env: PEFT_FIXTURES_DIR (default ../shared/fixtures/hf-peft-tiny-llama), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
TARGET=${CARGO_TARGET_DIR:-$REPO/target-cuda}
FIX=${PEFT_FIXTURES_DIR:-$REPO/../shared/fixtures/hf-peft-tiny-llama}
LIST=$TARGET/cuda-test-bins.txt
TESTS=(suite gpu_check)
LIMIT=$((64 * 1024 * 1024))

[ -d "$FIX/model" ] || { echo "fixtures not found at $FIX (set PEFT_FIXTURES_DIR)" >&2; exit 1; }
if [ ! -f "$LIST" ] || [ "${REBUILD:-0}" = 1 ]; then
  CARGO_TARGET_DIR=$TARGET scripts/cuda/build.sh --tests
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
B=$stage/peft-gpu-check
mkdir -p "$B/bin" "$B/fixtures"
for t in "${TESTS[@]}"; do
  exe=$(awk -v t="$t" '$1 == t { print $2 }' "$LIST" | tail -1)
  [ -n "$exe" ] && [ -f "$exe" ] || { echo "no test binary for $t in $LIST (run scripts/cuda/build.sh --tests)" >&2; exit 1; }
  cp "$exe" "$B/bin/$t"
  strip --strip-debug "$B/bin/$t"
done
cp -r "$FIX" "$B/fixtures/hf-peft-tiny-llama"
cp scripts/gpu-check.sh scripts/gpu_bench_torch.py "$B/"
chmod +x "$B/gpu-check.sh"
eval "$(scripts/cuda/setup.sh --env)"
{
  echo "peft-node GPU check bundle"
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- crates scripts || echo ' (+ uncommitted changes)')"
  echo "built: $(date -u +%FT%TZ) on $(uname -m), $(ldd --version | head -1)"
  echo "nvcc: $(nvcc --version | grep -o 'release [0-9.]*, V[0-9.]*')  CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION}"
  echo "glibc needed: $(objdump -T "$B/bin/gpu_check" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -1)"
  echo "needs: $(readelf -d "$B/bin/gpu_check" | grep NEEDED | grep -oE '\[.*\]' | tr -d '[]' | tr '\n' ' ')"
  for t in "${TESTS[@]}"; do echo "bin/$t: $(sha256sum "$B/bin/$t" | cut -c1-16) $(du -h "$B/bin/$t" | cut -f1)"; done
} > "$B/MANIFEST"
out=$TARGET/peft-gpu-check.tar.xz
tar -C "$stage" -cf - peft-gpu-check | xz -9e -T"$(nproc)" > "$out.tmp"
mv "$out.tmp" "$out"
size=$(stat -c %s "$out")
cat "$B/MANIFEST"
echo "bundle: $out ($((size / 1024 / 1024)) MiB; limit 64 MiB)"
[ "$size" -lt "$LIMIT" ] || { echo "bundle too large" >&2; exit 1; }
