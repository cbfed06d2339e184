// The AVX-512 VNNI path of the quantized linears: two blocks per vpdpbusd.
#pragma once

#include "quantized_formats.h"

#if defined(__AVX512VNNI__)
#include <immintrin.h>
#endif

namespace nanovllm {

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// Two blocks (64 inputs) per instruction: 16 int32 sums, the first eight block b's.
inline __m512i load_pair(const Int8Format& w, int64_t n, int64_t b) {
  return _mm512_loadu_si512(w.values + n * w.in + b * kBlock);
}
inline __m512i load_pair(const Int4Format& w, int64_t n, int64_t b) {
  const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.packed + n * (w.in / 2) + b * kBlock / 2));
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i low = _mm256_and_si256(bytes, mask), high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
  // [b low, b+1 low, b high, b+1 high] in 16-byte lanes, reordered to input order
  const __m512i lanes = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
  return _mm512_shuffle_i64x2(lanes, lanes, _MM_SHUFFLE(3, 1, 2, 0));
}
inline __m512i pair_dot(const Int8Format&, __m512i q, __m512i xq) {
  const __m512i negated = _mm512_mask_sub_epi8(xq, _mm512_movepi8_mask(q), _mm512_setzero_si512(), xq);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(q), negated);
}
inline __m512i pair_dot(const Int4Format&, __m512i q, __m512i xq) {
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xq);
}
// {a x 8, b x 8}: a block pair's scales, lane for lane with pair_dot's sums
inline __m512 pair_scales(float a, float b) {
  return _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1);
}

template <typename T, typename Format, int ROWS>
inline void avx512_tile_rows(const Format& w, const QuantizedRows& x, int64_t row, T* out, int64_t out_features,
                             int64_t n) {
  __m512 acc[kOuts][ROWS];
  for (int o = 0; o < kOuts; ++o)
    for (int r = 0; r < ROWS; ++r) acc[o][r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < w.in / kBlock; b += 2) {
    __m512i xq[ROWS];
    __m512 dx[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      xq[r] = _mm512_loadu_si512(x.block(row + r, b));
      dx[r] = pair_scales(x.scale(row + r, b), x.scale(row + r, b + 1));
    }
    for (int o = 0; o < kOuts; ++o) {
      const __m512i q = load_pair(w, n + o, b);
      const __m512 dw = pair_scales(w.scale(n + o, b), w.scale(n + o, b + 1));
      for (int r = 0; r < ROWS; ++r) {
        const __m512 dot = _mm512_cvtepi32_ps(pair_dot(w, q, xq[r]));
        acc[o][r] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, dx[r]), acc[o][r]);
      }
    }
  }
  for (int o = 0; o < kOuts; ++o)
    for (int r = 0; r < ROWS; ++r)
      out[(row + r) * out_features + n + o] =
          static_cast<T>(_mm512_reduce_add_ps(acc[o][r]) + min_term(w, x, row + r, n + o));
}

// in: a multiple of 64
template <typename T, typename Format>
void avx512_tile(const Format& w, const QuantizedRows& x, T* out, int64_t out_features, int64_t n) {
  constexpr int kRows = 4;
  int64_t row = 0;
  for (; row + kRows <= x.rows; row += kRows) avx512_tile_rows<T, Format, kRows>(w, x, row, out, out_features, n);
  for (; row < x.rows; ++row) avx512_tile_rows<T, Format, 1>(w, x, row, out, out_features, n);
}
#endif

}  // namespace nanovllm
