#!/usr/bin/env bash
# Fast check of our CUDA kernels without building the cuda feature (seconds, not the
# 20+ minutes of candle-kernels): nvcc 13.0 compiles crates/peft-core/kernels/*.cu to PTX as
# build.rs does, ptxas assembles it for sm_$CUDA_COMPUTE_CAP, and every op's entry point must
# exist for f32, f64, bf16 and f16 (the names src/ops/cuda/mod.rs loads).
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(scripts/cuda/setup.sh --compiler-only)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for cu in crates/peft-core/kernels/*.cu; do
  name=$(basename "$cu" .cu)
  nvcc --ptx -O3 -std=c++17 --expt-relaxed-constexpr -arch="compute_$CUDA_COMPUTE_CAP" -o "$tmp/$name.ptx" "$cu"
  ptxas -arch="sm_$CUDA_COMPUTE_CAP" -o "$tmp/$name.cubin" "$tmp/$name.ptx"
  echo "$cu: $(grep -c '^\.visible \.entry' "$tmp/$name.ptx") kernels, PTX $(grep -m1 '^\.version' "$tmp/$name.ptx" | cut -d' ' -f2)"
done
# Kernel names the Rust side asks for.
want=$(grep -oE 'kernel!\(dev, T, "[a-z_0-9]+"\)' crates/peft-core/src/ops/cuda/mod.rs | grep -oE '"[a-z_0-9]+"' | tr -d '"' | sort -u)
missing=0
for k in $want; do
  for t in f32 f64 bf16 f16; do
    grep -q "\.entry ${k}_${t}(" "$tmp"/*.ptx || { echo "missing kernel ${k}_${t}" >&2; missing=1; }
  done
done
[ "$missing" -eq 0 ] && echo "all $(echo "$want" | wc -l) kernels x 4 dtypes present"
exit $missing
