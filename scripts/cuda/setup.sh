#!/usr/bin/env bash
# A CUDA 13.0 toolkit for building the `cuda` feature on a machine without a GPU or a
# system CUDA install: nvcc, headers and the libraries candle links (cuBLAS, cuBLASLt,
# cuRAND, NVRTC, cudart) from NVIDIA's PyPI wheels, plus a stub libcuda.so (the driver
# library, which only a GPU machine has) so that the link succeeds.
#
#   scripts/cuda/setup.sh                  # idempotent; prints the env to export
#   scripts/cuda/setup.sh --compiler-only  # nvcc + headers only (~60 MB, for check-kernels.sh)
#   source <(scripts/cuda/setup.sh --env)
#
# Layout: .cache/cuda-toolkit/site/nvidia/cu13 is CUDA_ROOT, with bin/nvcc, include/,
# lib/ (+ lib64 -> lib) holding unversioned .so links, and lib/stubs/libcuda.so.
# nvcc is pinned to 13.0.x: the GPU box's driver (580, CUDA 13.0) cannot JIT PTX that a
# newer nvcc writes.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT_DIR=$PWD
TK=${CUDA_TOOLKIT_DIR:-$ROOT_DIR/.cache/cuda-toolkit}
SITE=$TK/site
CUDA_ROOT=$SITE/nvidia/cu13

print_env() {
  echo "export CUDA_ROOT=$CUDA_ROOT CUDA_PATH=$CUDA_ROOT CUDA_HOME=$CUDA_ROOT"
  echo "export PATH=$CUDA_ROOT/bin:\$PATH"
  echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000"
  # Build scripts (nvcc -> cicc) and any host tool that dlopens the libraries.
  echo "export LD_LIBRARY_PATH=$CUDA_ROOT/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
}

if [ "${1:-}" = "--env" ]; then
  [ -x "$CUDA_ROOT/bin/nvcc" ] || { echo "run scripts/cuda/setup.sh first" >&2; exit 1; }
  print_env
  exit 0
fi

# Pinned to the CUDA 13.0 release train (cuRAND has its own numbering: 10.4.0 = 13.0).
COMPILER=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
LIBS=(
  "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.0.35"
)
if [ "${1:-}" = "--compiler-only" ]; then PKGS=("${COMPILER[@]}"); else PKGS=("${COMPILER[@]}" "${LIBS[@]}"); fi
STAMP=$TK/.installed
covered=1
for p in "${PKGS[@]}"; do grep -qxF "$p" "$STAMP" 2>/dev/null || covered=0; done
if [ "$covered" = 0 ]; then
  want=$(printf '%s\n' "${PKGS[@]}")
  echo "== pip install --target $SITE (CUDA 13.0 wheels: ${#PKGS[@]} packages)" >&2
  rm -rf "$SITE"
  mkdir -p "$TK"
  python3 -m pip install --quiet --no-deps --disable-pip-version-check --target "$SITE" "${PKGS[@]}" >&2
  printf '%s\n' "$want" > "$STAMP"
fi

[ -x "$CUDA_ROOT/bin/nvcc" ] || { echo "nvcc missing under $CUDA_ROOT" >&2; exit 1; }
# nvcc looks for cicc and libdevice under ../nvvm relative to bin; the nvvm wheel puts
# them at cu13/nvvm already. Make the tools executable (wheels sometimes lose the bit).
chmod +x "$CUDA_ROOT"/bin/* "$CUDA_ROOT"/nvvm/bin/* 2>/dev/null || true

# Unversioned links for the linker: libfoo.so -> libfoo.so.N
cd "$CUDA_ROOT/lib"
for f in libcudart.so.* libcublas.so.* libcublasLt.so.* libcurand.so.* libnvrtc.so.*; do
  [ -e "$f" ] || continue
  base=${f%%.so.*}.so
  [ -e "$base" ] || ln -sf "$f" "$base"
done
cd "$CUDA_ROOT"
[ -e lib64 ] || ln -s lib lib64

# Stub driver library: every cu* function declared in cuda.h (as declared, and after
# the header's _v2/_v3 renames), each returning CUDA_ERROR_STUB_LIBRARY (34). Its soname
# is libcuda.so.1, so binaries linked against it load the real driver on a GPU machine.
STUB=$CUDA_ROOT/lib/stubs/libcuda.so
if [ ! -f "$STUB" ] || [ "$CUDA_ROOT/include/cuda.h" -nt "$STUB" ]; then
  echo "== stub libcuda.so" >&2
  mkdir -p "$CUDA_ROOT/lib/stubs"
  tmp=$(mktemp -d)
  {
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$CUDA_ROOT/include/cuda.h"
    gcc -E -P -I"$CUDA_ROOT/include" -x c "$CUDA_ROOT/include/cuda.h" | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\('
  } | tr -d '( \t' | sort -u | grep -vE '^(cuuint|cudaError|cuDoubleComplex|cuFloatComplex)' > "$tmp/syms"
  awk '{ printf "int %s(void) { return 34; }\n", $1 }' "$tmp/syms" > "$tmp/stub.c"
  gcc -shared -fPIC -O0 -o "$STUB" -Wl,-soname,libcuda.so.1 "$tmp/stub.c"
  ln -sf libcuda.so "$CUDA_ROOT/lib/stubs/libcuda.so.1"
  echo "   $(wc -l < "$tmp/syms") symbols" >&2
  rm -rf "$tmp"
fi

"$CUDA_ROOT/bin/nvcc" --version | tail -2 >&2
print_env
