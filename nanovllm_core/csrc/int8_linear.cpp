// Weight-only int8 linear for a few rows: out = x @ (values * scales[:, None])^T.
//
// At batch 1 a decode step is bound by reading the weights. torch's
// _weight_int8pack_mm reads them at about 11 GB/s here; this loop reads each
// int8 weight row once for all (up to four) input rows, widens 16 weights at a
// time to float32 and accumulates with FMAs, tiles of four output rows sharing
// each load of x. The scale is applied once per output, after the sum.

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "vec.h"

namespace nanovllm {
namespace {

constexpr int64_t kMaxRows = 4;
constexpr int64_t kPrefetchTiles = 8;  // measured: 4 and 16 tiles ahead read the weights slower  // input rows per pass: 4 x 4 accumulators stay in registers

// x: [rows, in] float32; weights: [out, in] int8; writes out[row * out_features + n] for n in [first, last).
template <typename T>
void generic_pass(const float* x, int64_t rows, const int8_t* weights, const float* scales, T* out, int64_t in,
                  int64_t out_features, int64_t first, int64_t last) {
  std::vector<float> widened(in);
  for (int64_t n = first; n < last; ++n) {
    const int8_t* w = weights + n * in;
#pragma omp simd
    for (int64_t k = 0; k < in; ++k) widened[k] = static_cast<float>(w[k]);
    for (int64_t r = 0; r < rows; ++r) out[r * out_features + n] = static_cast<T>(dot(widened.data(), x + r * in, in) * scales[n]);
  }
}

#if defined(__AVX512F__)
inline __m512 widen16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// OUTS output rows (a tile) times ROWS input rows; in is a multiple of 16.
template <typename T, int ROWS, int OUTS>
inline void avx512_tile(const float* x, const int8_t* weights, const float* scales, T* out, int64_t in,
                        int64_t out_features, int64_t n) {
  __m512 acc[OUTS][ROWS];
  for (int o = 0; o < OUTS; ++o)
    for (int r = 0; r < ROWS; ++r) acc[o][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < in; k += 16) {
    __m512 xs[ROWS];
    for (int r = 0; r < ROWS; ++r) xs[r] = _mm512_loadu_ps(x + r * in + k);
    for (int o = 0; o < OUTS; ++o) {
      const __m512 w = widen16(weights + (n + o) * in + k);
      for (int r = 0; r < ROWS; ++r) acc[o][r] = _mm512_fmadd_ps(w, xs[r], acc[o][r]);
    }
  }
  for (int o = 0; o < OUTS; ++o)
    for (int r = 0; r < ROWS; ++r)
      out[r * out_features + n + o] = static_cast<T>(_mm512_reduce_add_ps(acc[o][r]) * scales[n + o]);
}

template <typename T, int ROWS>
void avx512_pass(const float* x, const int8_t* weights, const float* scales, T* out, int64_t in, int64_t out_features,
                 int64_t first, int64_t last) {
  int64_t n = first;
  for (; n + 4 <= last; n += 4) {
    const char* ahead = reinterpret_cast<const char*>(weights + (n + 4 * kPrefetchTiles) * in);
    if (n + 4 * (kPrefetchTiles + 1) <= last)
      for (int64_t offset = 0; offset < 4 * in; offset += 64) __builtin_prefetch(ahead + offset);
    avx512_tile<T, ROWS, 4>(x, weights, scales, out, in, out_features, n);
  }
  for (; n < last; ++n) avx512_tile<T, ROWS, 1>(x, weights, scales, out, in, out_features, n);
}
#endif

template <typename T>
void pass(const float* x, int64_t rows, const int8_t* weights, const float* scales, T* out, int64_t in,
          int64_t out_features, int64_t first, int64_t last, bool generic_only) {
#if defined(__AVX512F__)
  if (!generic_only && in % 16 == 0) {
    switch (rows) {
      case 1: return avx512_pass<T, 1>(x, weights, scales, out, in, out_features, first, last);
      case 2: return avx512_pass<T, 2>(x, weights, scales, out, in, out_features, first, last);
      case 3: return avx512_pass<T, 3>(x, weights, scales, out, in, out_features, first, last);
      case 4: return avx512_pass<T, 4>(x, weights, scales, out, in, out_features, first, last);
      default: break;
    }
  }
#endif
  generic_pass(x, rows, weights, scales, out, in, out_features, first, last);
}

}  // namespace

at::Tensor int8_linear(const at::Tensor& input, const at::Tensor& values, const at::Tensor& scales, bool generic_only) {
  TORCH_CHECK(input.dim() == 2 && values.dim() == 2 && input.size(1) == values.size(1),
              "int8_linear: input [rows, in], values [out, in]");
  TORCH_CHECK(values.scalar_type() == at::kChar, "int8_linear: values must be int8");
  TORCH_CHECK(scales.dim() == 1 && scales.size(0) == values.size(0), "int8_linear: one scale per output");
  const int64_t rows = input.size(0), in = input.size(1), out_features = values.size(0);
  // float32 copies in plain buffers: two fewer tensor ops per call, which count at batch 1
  std::vector<float> x(rows * in), s(out_features);
  const at::Tensor input_rows = input.contiguous(), scale_values = scales.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "int8_linear_input", [&] {
    load_floats(input_rows.data_ptr<scalar_t>(), x.data(), rows * in);
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scales.scalar_type(), "int8_linear_scales", [&] {
    load_floats(scale_values.data_ptr<scalar_t>(), s.data(), out_features);
  });
  const at::Tensor w = values.contiguous();
  at::Tensor out = at::empty({rows, out_features}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "int8_linear", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    // output rows split across threads, in multiples of a tile; each thread reads its weights once per pass
    at::parallel_for(0, out_features, 64, [&](int64_t first, int64_t last) {
      for (int64_t r = 0; r < rows; r += kMaxRows)
        pass(x.data() + r * in, std::min(kMaxRows, rows - r), w.data_ptr<int8_t>(), s.data(), o + r * out_features, in,
             out_features, first, last, generic_only);
    });
  });
  return out;
}

}  // namespace nanovllm
