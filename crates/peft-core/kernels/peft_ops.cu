// CUDA forward and backward kernels of peft-core's fused ops (src/ops/*.rs), compiled to
// PTX by build.rs (feature `cuda`) and launched from src/ops/cuda/mod.rs. Each kernel
// mirrors its CPU twin; the math is the same, the reduction order differs (tree sums in
// a fixed block shape, so results are deterministic run to run).
//
// Every kernel exists for f32, f64, bf16 and f16 as `<name>_<dtype>`. Half types are read
// into f32, computed in f32 and rounded once on the way out (f64 computes in f64).
// Inputs are contiguous (the Rust side packs strided views first). Row kernels run one
// block per row, blockDim.x a multiple of 32 and at most 1024.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// ---- types ---------------------------------------------------------------------------

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v);
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

// Rounds through T and back: the value a T tensor would hold (identity for f32/f64).
template <typename T, typename A> __device__ __forceinline__ A round_as(A v) { return to_acc(from_acc<T>(v)); }

__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float log_(float v) { return logf(v); }
__device__ __forceinline__ double log_(double v) { return log(v); }
__device__ __forceinline__ float sqrt_(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_(double v) { return sqrt(v); }

template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -INFINITY; }
template <> __device__ __forceinline__ double neg_inf<double>() { return -(double)INFINITY; }

// ---- block reductions (deterministic for a given blockDim) ----------------------------

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// NaNs are skipped, as the CPU kernels' `max` does.
template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    A w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// Sum over the block; every thread gets the result. `buf` holds 32 values.
template <typename A> __device__ A block_sum(A v, A *buf) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) buf[wid] = v;
  __syncthreads();
  if (wid == 0) {
    v = lane < nw ? buf[lane] : A(0);
    v = warp_sum(v);
    if (lane == 0) buf[0] = v;
  }
  __syncthreads();
  return buf[0];
}

template <typename A> __device__ A block_max(A v, A *buf) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) buf[wid] = v;
  __syncthreads();
  if (wid == 0) {
    v = lane < nw ? buf[lane] : neg_inf<A>();
    v = warp_max(v);
    if (lane == 0) buf[0] = v;
  }
  __syncthreads();
  return buf[0];
}

// ---- RMSNorm ---------------------------------------------------------------------------
// y = round(x * r) * w with r = 1 / sqrt(mean(x^2) + eps): normalised in the accumulator
// type, cast to T, then scaled, as transformers' LlamaRMSNorm (and ops::composite) does.

template <typename T>
__device__ void rms_norm_fwd(const T *x, const T *w, T *y, size_t rows, size_t d, double eps) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[32];
  for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T *xr = x + row * d;
    T *yr = y + row * d;
    A ss = 0;
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) {
      A v = to_acc(xr[j]);
      ss += v * v;
    }
    ss = block_sum(ss, buf);
    const A r = A(1) / sqrt_(ss * (A(1) / A(d)) + A(eps));
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) {
      yr[j] = from_acc<T>(round_as<T>(to_acc(xr[j]) * r) * to_acc(w[j]));
    }
  }
}

// dx = r * g * w - r^3 * x * mean(g * w * x), written to out[0 .. rows*d]; r per row to
// `rbuf` (f64) for the weight gradient below.
template <typename T>
__device__ void rms_norm_bwd_dx(const T *x, const T *w, const T *g, T *out, double *rbuf, size_t rows, size_t d,
                                double eps) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[32];
  for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T *xr = x + row * d, *gr = g + row * d;
    T *dx = out + row * d;
    A ss = 0, dot = 0;
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) {
      A xv = to_acc(xr[j]);
      ss += xv * xv;
      dot += to_acc(gr[j]) * to_acc(w[j]) * xv;
    }
    ss = block_sum(ss, buf);
    dot = block_sum(dot, buf);
    const A r = A(1) / sqrt_(ss * (A(1) / A(d)) + A(eps));
    const A c = r * r * r * dot * (A(1) / A(d));
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) {
      dx[j] = from_acc<T>(r * (to_acc(gr[j]) * to_acc(w[j])) - c * to_acc(xr[j]));
    }
    if (threadIdx.x == 0) rbuf[row] = (double)r;
  }
}

// Partial weight gradients: partial[chunk * d + j] = sum over the chunk's rows of g*x*r.
// grid = (ceil(d / blockDim.x), chunks); rows [chunk * rows_per_chunk, ...).
template <typename T>
__device__ void rms_norm_bwd_dw_partial(const T *x, const T *g, const double *rbuf, double *partial, size_t rows,
                                        size_t d, size_t rows_per_chunk) {
  const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  const size_t chunk = blockIdx.y;
  const size_t r0 = chunk * rows_per_chunk;
  const size_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  double acc = 0;
  for (size_t row = r0; row < r1; ++row) {
    acc += (double)to_acc(g[row * d + j]) * ((double)to_acc(x[row * d + j]) * rbuf[row]);
  }
  partial[chunk * d + j] = acc;
}

// dweight[j] = sum over chunks in order, written after dx: out[rows*d + j].
template <typename T> __device__ void rms_norm_bwd_dw_sum(const double *partial, T *out, size_t chunks, size_t d, size_t n) {
  const size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  double acc = 0;
  for (size_t c = 0; c < chunks; ++c) acc += partial[c * d + j];
  out[n + j] = from_acc<T>((typename Acc<T>::type)acc);
}

// ---- rotate-half RoPE --------------------------------------------------------------------
// x [b, h, t, dim], cos/sin [b, t, dim/2]. One thread per (row, pair).
// forward: [x1 c - x2 s, x2 c + x1 s]; inverse (the backward): [x1 c + x2 s, x2 c - x1 s].

template <typename T>
__device__ void rope(const T *x, const T *cos, const T *sin, T *y, size_t b, size_t h, size_t t, size_t dim,
                     int inverse) {
  typedef typename Acc<T>::type A;
  const size_t half = dim / 2;
  const size_t pairs = b * h * t * half;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < pairs; i += (size_t)gridDim.x * blockDim.x) {
    const size_t row = i / half, j = i % half;
    const size_t at = (row / (h * t) * t + row % t) * half + j;
    const A c = to_acc(cos[at]), s = inverse ? -to_acc(sin[at]) : to_acc(sin[at]);
    const A x1 = to_acc(x[row * dim + j]), x2 = to_acc(x[row * dim + half + j]);
    y[row * dim + j] = from_acc<T>(x1 * c - x2 * s);
    y[row * dim + half + j] = from_acc<T>(x2 * c + x1 * s);
  }
}

// ---- softmax over the last dimension --------------------------------------------------------

template <typename T> __device__ void softmax_fwd(const T *x, T *y, size_t rows, size_t d) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[32];
  for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T *xr = x + row * d;
    T *yr = y + row * d;
    A m = neg_inf<A>();
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) {
      A v = to_acc(xr[j]);
      m = v > m ? v : m;
    }
    m = block_max(m, buf);
    A s = 0;
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) s += exp_(to_acc(xr[j]) - m);
    s = block_sum(s, buf);
    const A inv = A(1) / s;
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) yr[j] = from_acc<T>(exp_(to_acc(xr[j]) - m) * inv);
  }
}

// dx = y * (g - sum(g * y)) per row.
template <typename T> __device__ void softmax_bwd(const T *y, const T *g, T *dx, size_t rows, size_t d) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[32];
  for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T *yr = y + row * d, *gr = g + row * d;
    T *o = dx + row * d;
    A dot = 0;
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) dot += to_acc(yr[j]) * to_acc(gr[j]);
    dot = block_sum(dot, buf);
    for (size_t j = threadIdx.x; j < d; j += blockDim.x) o[j] = from_acc<T>(to_acc(yr[j]) * (to_acc(gr[j]) - dot));
  }
}

// ---- SwiGLU gate: silu(gate) * up -------------------------------------------------------------

template <typename T> __device__ void silu_mul_fwd(const T *gate, const T *up, T *y, size_t n) {
  typedef typename Acc<T>::type A;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const A x = to_acc(gate[i]);
    const A e = A(1) + exp_(-x);
    y[i] = from_acc<T>(x / e * to_acc(up[i]));
  }
}

// out[0..n] = g * up * silu'(gate), out[n..2n] = g * silu(gate);
// silu'(x) = sigmoid(x) * (1 - silu(x)) + silu(x), candle's form.
template <typename T> __device__ void silu_mul_bwd(const T *gate, const T *up, const T *g, T *out, size_t n) {
  typedef typename Acc<T>::type A;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const A x = to_acc(gate[i]);
    const A e = A(1) + exp_(-x);
    const A sig = A(1) / e, silu = x / e;
    const A gv = to_acc(g[i]);
    out[i] = from_acc<T>(gv * to_acc(up[i]) * (sig * (A(1) - silu) + silu));
    out[n + i] = from_acc<T>(gv * silu);
  }
}

// ---- weighted cross-entropy ---------------------------------------------------------------------
// logits [rows, vocab], targets u32 [rows], weights [rows] (T). Rows of weight 0 are
// skipped. A target out of range gives NaN (the Rust side validates labels beforehand).

// row_loss[row] = w * (log(sum(exp(l - max))) - (l[target] - max)), f64.
template <typename T>
__device__ void cross_entropy_rows(const T *logits, const uint32_t *targets, const T *weights, double *row_loss,
                                   size_t rows, size_t vocab) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[32];
  for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const A w = to_acc(weights[row]);
    if (w == A(0)) {  // uniform across the block: no thread reaches a barrier alone
      if (threadIdx.x == 0) row_loss[row] = 0.0;
      continue;
    }
    const T *l = logits + row * vocab;
    const size_t t = targets[row];
    A m = neg_inf<A>();
    for (size_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      A v = to_acc(l[j]);
      m = v > m ? v : m;
    }
    m = block_max(m, buf);
    A s = 0;
    for (size_t j = threadIdx.x; j < vocab; j += blockDim.x) s += exp_(to_acc(l[j]) - m);
    s = block_sum(s, buf);
    if (threadIdx.x == 0) {
      const double nll = t < vocab ? (double)log_(s) - (double)(to_acc(l[t]) - m) : (double)NAN;
      row_loss[row] = (double)w * nll;
    }
  }
}

// out[0] = sum of row_loss in a fixed order (one block).
template <typename T> __device__ void cross_entropy_sum(const double *row_loss, T *out, size_t rows) {
  __shared__ double buf[32];
  double acc = 0;
  for (size_t i = threadIdx.x; i < rows; i += blockDim.x) acc += row_loss[i];
  acc = block_sum(acc, buf);
  if (threadIdx.x == 0) out[0] = from_acc<T>((typename Acc<T>::type)acc);
}

// dlogits = (softmax(l) - onehot(target)) * w * g; zero rows for weight 0.
template <typename T>
__device__ void cross_entropy_bwd(const T *logits, const uint32_t *targets, const T *weights, T *out, size_t rows,
                                  size_t vocab, double g) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[32];
  for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T *l = logits + row * vocab;
    T *o = out + row * vocab;
    const A w = to_acc(weights[row]);
    if (w == A(0)) {
      for (size_t j = threadIdx.x; j < vocab; j += blockDim.x) o[j] = from_acc<T>(A(0));
      continue;
    }
    const size_t t = targets[row];
    A m = neg_inf<A>();
    for (size_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      A v = to_acc(l[j]);
      m = v > m ? v : m;
    }
    m = block_max(m, buf);
    A s = 0;
    for (size_t j = threadIdx.x; j < vocab; j += blockDim.x) s += exp_(to_acc(l[j]) - m);
    s = block_sum(s, buf);
    const A inv = A(1) / s, scale = w * A(g);
    for (size_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      A v = exp_(to_acc(l[j]) - m) * inv * scale;
      if (j == t) v -= scale;
      o[j] = from_acc<T>(v);
    }
  }
}

// ---- exported entry points ------------------------------------------------------------------------

#define PEFT_OPS(T, SUFFIX)                                                                                            \
  extern "C" __global__ void peft_rms_norm_fwd_##SUFFIX(const T *x, const T *w, T *y, size_t rows, size_t d,           \
                                                         double eps) {                                                 \
    rms_norm_fwd<T>(x, w, y, rows, d, eps);                                                                            \
  }                                                                                                                    \
  extern "C" __global__ void peft_rms_norm_bwd_dx_##SUFFIX(const T *x, const T *w, const T *g, T *out, double *rbuf,   \
                                                            size_t rows, size_t d, double eps) {                       \
    rms_norm_bwd_dx<T>(x, w, g, out, rbuf, rows, d, eps);                                                              \
  }                                                                                                                    \
  extern "C" __global__ void peft_rms_norm_bwd_dw_partial_##SUFFIX(const T *x, const T *g, const double *rbuf,         \
                                                                    double *partial, size_t rows, size_t d,            \
                                                                    size_t rows_per_chunk) {                           \
    rms_norm_bwd_dw_partial<T>(x, g, rbuf, partial, rows, d, rows_per_chunk);                                          \
  }                                                                                                                    \
  extern "C" __global__ void peft_rms_norm_bwd_dw_sum_##SUFFIX(const double *partial, T *out, size_t chunks, size_t d, \
                                                                size_t n) {                                            \
    rms_norm_bwd_dw_sum<T>(partial, out, chunks, d, n);                                                                \
  }                                                                                                                    \
  extern "C" __global__ void peft_rope_##SUFFIX(const T *x, const T *cos, const T *sin, T *y, size_t b, size_t h,      \
                                                 size_t t, size_t dim, int inverse) {                                  \
    rope<T>(x, cos, sin, y, b, h, t, dim, inverse);                                                                    \
  }                                                                                                                    \
  extern "C" __global__ void peft_softmax_fwd_##SUFFIX(const T *x, T *y, size_t rows, size_t d) {                      \
    softmax_fwd<T>(x, y, rows, d);                                                                                     \
  }                                                                                                                    \
  extern "C" __global__ void peft_softmax_bwd_##SUFFIX(const T *y, const T *g, T *dx, size_t rows, size_t d) {         \
    softmax_bwd<T>(y, g, dx, rows, d);                                                                                 \
  }                                                                                                                    \
  extern "C" __global__ void peft_silu_mul_fwd_##SUFFIX(const T *gate, const T *up, T *y, size_t n) {                  \
    silu_mul_fwd<T>(gate, up, y, n);                                                                                   \
  }                                                                                                                    \
  extern "C" __global__ void peft_silu_mul_bwd_##SUFFIX(const T *gate, const T *up, const T *g, T *out, size_t n) {    \
    silu_mul_bwd<T>(gate, up, g, out, n);                                                                              \
  }                                                                                                                    \
  extern "C" __global__ void peft_cross_entropy_rows_##SUFFIX(const T *logits, const uint32_t *targets,                \
                                                               const T *weights, double *row_loss, size_t rows,        \
                                                               size_t vocab) {                                         \
    cross_entropy_rows<T>(logits, targets, weights, row_loss, rows, vocab);                                            \
  }                                                                                                                    \
  extern "C" __global__ void peft_cross_entropy_sum_##SUFFIX(const double *row_loss, T *out, size_t rows) {            \
    cross_entropy_sum<T>(row_loss, out, rows);                                                                         \
  }                                                                                                                    \
  extern "C" __global__ void peft_cross_entropy_bwd_##SUFFIX(const T *logits, const uint32_t *targets,                 \
                                                              const T *weights, T *out, size_t rows, size_t vocab,     \
                                                              double g) {                                              \
    cross_entropy_bwd<T>(logits, targets, weights, out, rows, vocab, g);                                               \
  }

PEFT_OPS(float, f32)
PEFT_OPS(double, f64)
PEFT_OPS(__nv_bfloat16, bf16)
PEFT_OPS(__half, f16)
