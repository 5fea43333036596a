#!/usr/bin/env bash
# Builds the CUDA addon and the CUDA test binaries on any Linux x64 machine, GPU or not,
# with the toolkit from scripts/cuda/setup.sh, into target-cuda/ (the CPU build's target/
# is untouched). Then copies the addon to
#   npm/linux-x64-gnu-cuda/peft-node.linux-x64-gnu-cuda.node   (the opt-in npm package)
#   peft-node.linux-x64-gnu-cuda.node                           (what src/native.ts finds locally)
#
#   scripts/cuda/build.sh            # addon + test binaries
#   scripts/cuda/build.sh --addon    # addon only
#   scripts/cuda/build.sh --tests    # test binaries only
# Env: CUDA_COMPUTE_CAP (default 90: H100/H200), CARGO_TARGET_DIR (default target-cuda),
#      CUDAFORGE_THREADS (parallel nvcc jobs, default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
eval "$(scripts/cuda/setup.sh)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
export CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
log() { echo "[cuda build $(date +%T)] $*" >&2; }
t0=$(date +%s)

if [ "$what" = all ] || [ "$what" = --addon ]; then
  log "cargo build --release --features cuda -p peft-napi (sm_$CUDA_COMPUTE_CAP, CUDA $CUDARC_CUDA_VERSION)"
  cargo build --release --features cuda -p peft-napi
  so=$CARGO_TARGET_DIR/release/libpeft_napi.so
  cp "$so" npm/linux-x64-gnu-cuda/peft-node.linux-x64-gnu-cuda.node
  cp "$so" peft-node.linux-x64-gnu-cuda.node
  log "addon: npm/linux-x64-gnu-cuda/peft-node.linux-x64-gnu-cuda.node ($(du -h "$so" | cut -f1)), needs:"
  readelf -d "$so" | grep NEEDED | sed 's/^/    /' >&2
  log "addon built after $(( $(date +%s) - t0 )) s"
fi

if [ "$what" = all ] || [ "$what" = --tests ]; then
  # -p peft-napi too (its lib has test = false): the same feature set as the addon build, so
  # the dependencies (candle-kernels' nvcc work above all) are shared, not rebuilt.
  log "cargo test --release --features cuda -p peft-core -p peft-napi --no-run"
  cargo test --release --features cuda -p peft-core -p peft-napi --no-run --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' > "$CARGO_TARGET_DIR/cuda-test-bins.txt"
  log "test binaries ($CARGO_TARGET_DIR/cuda-test-bins.txt):"
  sed 's/^/    /' "$CARGO_TARGET_DIR/cuda-test-bins.txt" >&2
fi
log "done in $(( $(date +%s) - t0 )) s"
