#!/usr/bin/env bash
# The GPU check of peft-node's CUDA build: the one script to run on a CUDA machine.
# It runs from the bundle that scripts/cuda/pack-gpu-check.sh makes (test binaries built
# here without a GPU, the fixtures, this script, scripts/gpu_bench_torch.py):
#
#   tar xJf peft-gpu-check.tar.xz && cd peft-gpu-check
#   TORCH_PYTHON=/path/to/venv/bin/python ./gpu-check.sh      # ~3-5 min on an H200
#
# Needs: an NVIDIA driver >= 580 (CUDA 13.0), a Python venv with torch (CUDA 13 build),
# transformers and peft, whose CUDA libraries (cudart, cuBLAS, cuBLASLt, cuRAND, NVRTC)
# sit in its site-packages/nvidia/cu13/lib. No network, no Node, no Rust.
#
# Steps (each logged to gpu-check.log; a summary at the end; exit status 0 only if all pass):
#   1. environment: driver, GPU, glibc, library resolution of the binaries
#   2. the CPU test binaries of the CUDA build (fixture_base, lora, ops): the CUDA build's
#      CPU paths still match transformers/PEFT
#   3. gpu_check: fused ops on CUDA vs CPU (f64/f32/f16/bf16), the fixture suite on CUDA in
#      f32 and over a bf16 base
#   4. benchmark: LoRA on a TinyLlama-1.1B-shaped model (bf16 base, batch 8 x 512, r=16,
#      all-linear), peft-node vs PyTorch + PEFT (sdpa and eager attention), with the ratio
# Env: TORCH_PYTHON (default: python3), CUDA_LIB_DIR (default: the venv's nvidia/cu13/lib),
#      PEFT_CUDA_DEVICE (0), BENCH_STEPS (10), SKIP_BENCH=1, SKIP_TORCH=1.
set -uo pipefail
cd "$(dirname "$0")"
HERE=$PWD
LOG=$HERE/gpu-check.log
: > "$LOG"
PY=${TORCH_PYTHON:-python3}
GPU=${PEFT_CUDA_DEVICE:-0}
export PEFT_CUDA_DEVICE=$GPU
export PEFT_BENCH_STEPS=${BENCH_STEPS:-10}
export PEFT_FIXTURES_DIR=$HERE/fixtures/hf-peft-tiny-llama
export RUST_BACKTRACE=1
declare -a SUMMARY=()
status=0

say() { echo "$*" | tee -a "$LOG"; }
section() { say ""; say "=== $* ($(date +%T))"; }
record() { # name rc
  if [ "$2" -eq 0 ]; then SUMMARY+=("PASS  $1"); else SUMMARY+=("FAIL  $1 (exit $2)"); status=1; fi
}
run_logged() { # name cmd...
  local name=$1; shift
  section "$name: $*"
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  record "$name" "$rc"
  return "$rc"
}

[ -d bin ] && [ -d fixtures/hf-peft-tiny-llama ] || {
  echo "gpu-check.sh runs from the bundle of scripts/cuda/pack-gpu-check.sh (bin/, fixtures/ next to it)" >&2
  exit 2
}

section "environment"
[ -f MANIFEST ] && tee -a "$LOG" < MANIFEST
if [ -z "${CUDA_LIB_DIR:-}" ]; then
  CUDA_LIB_DIR=$("$PY" - <<'EOF' 2>/dev/null
import os, nvidia
for base in nvidia.__path__:
    for sub in ("cu13/lib", "cuda_runtime/lib"):
        p = os.path.join(base, sub)
        if os.path.isdir(p):
            print(p); raise SystemExit
EOF
)
fi
if [ -z "$CUDA_LIB_DIR" ] || [ ! -d "$CUDA_LIB_DIR" ]; then
  say "cannot find the CUDA libraries: set CUDA_LIB_DIR (the torch venv's site-packages/nvidia/cu13/lib) or TORCH_PYTHON"
  exit 2
fi
export LD_LIBRARY_PATH=$CUDA_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "CUDA_LIB_DIR=$CUDA_LIB_DIR"
say "python: $PY ($("$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__)' 2>&1 | tail -1))"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv -i "$GPU" 2>&1 | tee -a "$LOG"
say "glibc: $(ldd --version 2>&1 | head -1)"
for b in bin/*; do chmod +x "$b"; done
missing=$(for b in bin/*; do ldd "$b" | grep "not found" | sed "s|^|$b: |"; done)
if [ -n "$missing" ]; then
  say "unresolved libraries:"; say "$missing"
  record "library resolution" 1
else
  say "all libraries resolve: $(ldd bin/gpu_check | grep -oE 'lib(cuda|cudart|cublas|cublasLt|curand|nvrtc)\.so[.0-9]*' | sort -u | tr '\n' ' ')"
  record "library resolution" 0
fi

# 2. CPU tests of the CUDA build.
# (One suite binary holds every test file; the filters pick these files' modules.)
run_logged "fixture_base, the PEFT fixtures of the method contract, ops (CPU paths of the CUDA build)" bin/suite fixture_base:: methods::fixtures_match_peft ops:: --test-threads=2

# 3. On the GPU.
run_logged "gpu_check: ops, fixture suite f32 + bf16 base" bin/gpu_check --test-threads=1 --nocapture

# 4. Benchmark, with nvidia-smi polling the GPU's memory (max over the run minus before).
poll_mem() { # file
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$GPU" -lms 100 > "$1" 2>/dev/null &
  echo $!
}
bench() { # name cmd...
  local name=$1; shift
  local f; f=$(mktemp)
  local before; before=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$GPU" 2>/dev/null | head -1)
  local pid; pid=$(poll_mem "$f")
  run_logged "$name" "$@"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  local peak; peak=$(sort -n "$f" | tail -1)
  rm -f "$f"
  if [ -n "$peak" ] && [ -n "$before" ]; then say "NVSMI impl=$name peak_mib=$((peak - before))"; fi
}
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  bench peft-node bin/gpu_check --ignored bench_lora_tinyllama --test-threads=1 --nocapture
  if [ "${SKIP_TORCH:-0}" != 1 ]; then
    bench torch-peft-sdpa "$PY" gpu_bench_torch.py --attn sdpa --steps "$PEFT_BENCH_STEPS" --device "cuda:$GPU"
    bench torch-peft-eager "$PY" gpu_bench_torch.py --attn eager --steps "$PEFT_BENCH_STEPS" --device "cuda:$GPU"
  fi
fi

section "summary"
printf '%s\n' "${SUMMARY[@]}" | tee -a "$LOG"
grep -E '^(ops|fixture) ' "$LOG" | sed 's/^/  /'
"$PY" - "$LOG" <<'EOF' | tee -a "$LOG"
import re, sys
rows = {}
nvsmi = {}
for line in open(sys.argv[1]):
    if line.startswith("BENCH "):
        kv = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
        rows[kv["impl"]] = kv
    elif line.startswith("NVSMI "):
        kv = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
        nvsmi[kv["impl"]] = kv["peak_mib"]
if rows:
    print("benchmark: LoRA r=16 all-linear, TinyLlama-1.1B shape, bf16 base, batch x seq as below")
    print(f"  {'impl':<18} {'tokens/s':>10} {'step ms':>9} {'fwd+bwd':>9} {'optim':>7} {'peak GiB':>9} {'nvsmi GiB':>10}")
    for name, kv in rows.items():
        nv = nvsmi.get(name)
        nv = f"{int(nv) / 1024:.2f}" if nv else "-"
        print(f"  {name:<18} {float(kv['tokens_per_s']):>10.0f} {float(kv['step_ms']):>9.1f} {float(kv['fwd_bwd_ms']):>9.1f} {float(kv['optim_ms']):>7.1f} {float(kv['peak_used_gib']):>9.2f} {nv:>10}   (batch {kv['batch']} seq {kv['seq']})")
    ours = rows.get("peft-node")
    for ref in ("torch-peft-sdpa", "torch-peft-eager"):
        if ours and ref in rows:
            r = float(ours["tokens_per_s"]) / float(rows[ref]["tokens_per_s"])
            m = float(ours["peak_used_gib"]) / max(float(rows[ref]["peak_used_gib"]), 1e-9)
            print(f"RATIO peft-node / {ref}: throughput {r:.2f}x, peak memory {m:.2f}x")
EOF
say ""
say "log: $LOG"
if [ "$status" -eq 0 ]; then say "GPU CHECK PASSED"; else say "GPU CHECK FAILED"; fi
exit $status
