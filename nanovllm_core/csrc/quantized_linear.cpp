// Weight-only quantized linear for a few rows: out = x @ dequantize(weight)^T.
//
// At batch 1 a decode step is bound by reading the weights, so fewer bytes per
// weight is the lever. Two formats:
// - int8: one int8 per weight and one scale per output row (1 byte per weight);
// - int4: groups of 32 weights along the input, each 4-bit q with a float16
//   scale d and minimum m, w = q * d + m (0.625 bytes per weight). Byte i of a
//   group's 16 holds q[i] in its low nibble and q[i + 16] in its high one, as
//   GGUF's Q4_1 blocks do.
// Each output row is read once for all (up to four) input rows: 16 or 32
// weights at a time are turned into float32 in registers and multiplied in
// with FMAs, tiles of four output rows sharing each load of x, and weight rows
// eight tiles ahead prefetched by hand (1.4x torch's _weight_int8pack_mm over
// SmolLM2's layers read from memory).

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "vec.h"

namespace nanovllm {
namespace {

constexpr int64_t kMaxRows = 4;        // input rows per pass: 4 x 4 accumulators stay in registers
constexpr int64_t kPrefetchTiles = 8;  // measured: 4 and 16 tiles ahead read the weights slower
constexpr int64_t kGroup = 32;         // int4 weights per scale and minimum

struct Int8Format {
  const int8_t* values;  // [out, in]
  const float* scales;   // [out]
  int64_t in;

  static constexpr int64_t kChunk = 16;  // weights per step
  int64_t row_bytes() const { return in; }
  const void* row(int64_t n) const { return values + n * in; }

  void dequantize_row(int64_t n, float* out) const {
    const int8_t* w = values + n * in;
    const float scale = scales[n];
#pragma omp simd
    for (int64_t k = 0; k < in; ++k) out[k] = static_cast<float>(w[k]) * scale;
  }

#if defined(__AVX512F__)
  void dequantize_chunk(int64_t n, int64_t k, __m512* out) const {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(values + n * in + k));
    out[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), _mm512_set1_ps(scales[n]));
  }
#endif
};

struct Int4Format {
  const uint8_t* packed;  // [out, in / 2]
  const at::Half* scales;  // [out, in / 32]
  const at::Half* mins;    // [out, in / 32]
  int64_t in;

  static constexpr int64_t kChunk = kGroup;
  int64_t row_bytes() const { return in / 2; }
  const void* row(int64_t n) const { return packed + n * (in / 2); }

  void dequantize_row(int64_t n, float* out) const {
    for (int64_t g = 0; g < in / kGroup; ++g) {
      const uint8_t* bytes = packed + n * (in / 2) + g * (kGroup / 2);
      const float d = to_float(scales[n * (in / kGroup) + g]), m = to_float(mins[n * (in / kGroup) + g]);
      for (int64_t i = 0; i < kGroup / 2; ++i) {
        out[g * kGroup + i] = static_cast<float>(bytes[i] & 0x0F) * d + m;
        out[g * kGroup + i + kGroup / 2] = static_cast<float>(bytes[i] >> 4) * d + m;
      }
    }
  }

#if defined(__AVX512F__)
  void dequantize_chunk(int64_t n, int64_t k, __m512* out) const {
    const int64_t group = n * (in / kGroup) + k / kGroup;
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + n * (in / 2) + k / 2));
    const __m128i low = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
    const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
    const __m512 d = _mm512_set1_ps(to_float(scales[group])), m = _mm512_set1_ps(to_float(mins[group]));
    out[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(low)), d, m);
    out[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high)), d, m);
  }
#endif
};

// x: [rows, in] float32; writes out[row * out_features + n] for n in [first, last).
template <typename T, typename Format>
void generic_pass(const Format& w, const float* x, int64_t rows, T* out, int64_t out_features, int64_t first,
                  int64_t last) {
  std::vector<float> weights(w.in);
  for (int64_t n = first; n < last; ++n) {
    w.dequantize_row(n, weights.data());
    for (int64_t r = 0; r < rows; ++r) out[r * out_features + n] = static_cast<T>(dot(weights.data(), x + r * w.in, w.in));
  }
}

#if defined(__AVX512F__)
// OUTS output rows (a tile) times ROWS input rows; in is a multiple of Format::kChunk.
template <typename T, typename Format, int ROWS, int OUTS>
inline void avx512_tile(const Format& w, const float* x, T* out, int64_t out_features, int64_t n) {
  constexpr int kVectors = Format::kChunk / 16;
  __m512 acc[OUTS][ROWS];
  for (int o = 0; o < OUTS; ++o)
    for (int r = 0; r < ROWS; ++r) acc[o][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < w.in; k += Format::kChunk) {
    __m512 xs[ROWS][kVectors];
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < kVectors; ++v) xs[r][v] = _mm512_loadu_ps(x + r * w.in + k + 16 * v);
    for (int o = 0; o < OUTS; ++o) {
      __m512 weights[kVectors];
      w.dequantize_chunk(n + o, k, weights);
      for (int r = 0; r < ROWS; ++r)
        for (int v = 0; v < kVectors; ++v) acc[o][r] = _mm512_fmadd_ps(weights[v], xs[r][v], acc[o][r]);
    }
  }
  for (int o = 0; o < OUTS; ++o)
    for (int r = 0; r < ROWS; ++r) out[r * out_features + n + o] = static_cast<T>(_mm512_reduce_add_ps(acc[o][r]));
}

template <typename T, typename Format, int ROWS>
void avx512_pass(const Format& w, const float* x, T* out, int64_t out_features, int64_t first, int64_t last) {
  int64_t n = first;
  for (; n + 4 <= last; n += 4) {
    if (n + 4 * (kPrefetchTiles + 1) <= last) prefetch(w.row(n + 4 * kPrefetchTiles), 4 * w.row_bytes());
    avx512_tile<T, Format, ROWS, 4>(w, x, out, out_features, n);
  }
  for (; n < last; ++n) avx512_tile<T, Format, ROWS, 1>(w, x, out, out_features, n);
}
#endif

template <typename T, typename Format>
void pass(const Format& w, const float* x, int64_t rows, T* out, int64_t out_features, int64_t first, int64_t last,
          bool generic_only) {
#if defined(__AVX512F__)
  if (!generic_only && w.in % Format::kChunk == 0) {
    switch (rows) {
      case 1: return avx512_pass<T, Format, 1>(w, x, out, out_features, first, last);
      case 2: return avx512_pass<T, Format, 2>(w, x, out, out_features, first, last);
      case 3: return avx512_pass<T, Format, 3>(w, x, out, out_features, first, last);
      case 4: return avx512_pass<T, Format, 4>(w, x, out, out_features, first, last);
      default: break;
    }
  }
#endif
  generic_pass(w, x, rows, out, out_features, first, last);
}

// The input in float32 (a plain buffer: one fewer tensor op per call, which
// counts at batch 1), then passes of up to four rows over each thread's share
// of the output rows.
template <typename Format>
at::Tensor run(const Format& w, const at::Tensor& input, int64_t out_features, bool generic_only) {
  const int64_t rows = input.size(0), in = input.size(1);
  std::vector<float> x(rows * in);
  const at::Tensor input_rows = input.contiguous();
  at::Tensor out = at::empty({rows, out_features}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "quantized_linear", [&] {
    load_floats(input_rows.data_ptr<scalar_t>(), x.data(), rows * in);
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, out_features, 64, [&](int64_t first, int64_t last) {
      for (int64_t r = 0; r < rows; r += kMaxRows)
        pass(w, x.data() + r * in, std::min(kMaxRows, rows - r), o + r * out_features, out_features, first, last,
             generic_only);
    });
  });
  return out;
}

}  // namespace

at::Tensor int8_linear(const at::Tensor& input, const at::Tensor& values, const at::Tensor& scales, bool generic_only) {
  TORCH_CHECK(input.dim() == 2 && values.dim() == 2 && input.size(1) == values.size(1),
              "int8_linear: input [rows, in], values [out, in]");
  TORCH_CHECK(values.scalar_type() == at::kChar, "int8_linear: values must be int8");
  TORCH_CHECK(scales.dim() == 1 && scales.size(0) == values.size(0), "int8_linear: one scale per output");
  std::vector<float> s(values.size(0));
  const at::Tensor scale_values = scales.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scales.scalar_type(), "int8_linear_scales", [&] {
    load_floats(scale_values.data_ptr<scalar_t>(), s.data(), s.size());
  });
  const at::Tensor w = values.contiguous();
  return run(Int8Format{w.data_ptr<int8_t>(), s.data(), input.size(1)}, input, values.size(0), generic_only);
}

at::Tensor int4_linear(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& scales,
                       const at::Tensor& mins, bool generic_only) {
  const int64_t in = input.size(1), out_features = packed.size(0);
  TORCH_CHECK(input.dim() == 2 && packed.dim() == 2 && in % kGroup == 0 && packed.size(1) * 2 == in,
              "int4_linear: input [rows, in] with in a multiple of 32, packed [out, in / 2]");
  TORCH_CHECK(packed.scalar_type() == at::kByte, "int4_linear: packed must be uint8");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && mins.scalar_type() == at::kHalf && scales.is_contiguous() &&
              mins.is_contiguous() && scales.numel() == out_features * (in / kGroup) && mins.numel() == scales.numel(),
              "int4_linear: float16 scales and mins [out, in / 32]");
  const at::Tensor p = packed.contiguous();
  return run(Int4Format{p.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(), mins.data_ptr<at::Half>(), in}, input,
             out_features, generic_only);
}

}  // namespace nanovllm
