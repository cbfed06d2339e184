// The AVX2 path of the quantized linears (and AVX-512 VNNI's dot product on 256-bit lanes).
#pragma once

#include "quantized_formats.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace nanovllm {

#if defined(__AVX2__) && defined(__F16C__)
// Sums of four neighbouring products of unsigned u and signed s bytes, as eight int32.
template <bool VNNI>
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  if constexpr (VNNI) return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#endif
  // pairs never saturate int16: |q| <= 127 (or 15) and |xq| <= 127
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// A weight row's blocks b and b + 1 in QuantizedRows' pair layout: {b's first 16
// bytes, b + 1's first 16} and {b's last 16, b + 1's last 16} (int4's packing needs no
// shuffle to get there). A block alone (the last of an odd count) leaves the upper lanes zero.
struct Halves {
  __m256i first, last;
};
inline __m256i bytes32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i bytes16(const void* p) {
  return _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <bool SINGLE>
inline Halves load_halves(const Int8Format& w, int64_t n, int64_t b) {
  const int8_t* q = w.values + n * w.in + b * kBlock;
  if constexpr (SINGLE) return {bytes16(q), bytes16(q + 16)};
  const __m256i b0 = bytes32(q), b1 = bytes32(q + kBlock);
  return {_mm256_permute2x128_si256(b0, b1, 0x20), _mm256_permute2x128_si256(b0, b1, 0x31)};
}
template <bool SINGLE>
inline Halves load_halves(const Int4Format& w, int64_t n, int64_t b) {
  // 16 bytes per block: low nibbles its first 16 weights, high nibbles its last 16
  const uint8_t* packed = w.packed + n * (w.in / 2) + b * kBlock / 2;
  const __m256i bytes = SINGLE ? bytes16(packed) : bytes32(packed), mask = _mm256_set1_epi8(0x0F);
  return {_mm256_and_si256(bytes, mask), _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask)};
}

// Eight int32: lanes 0-3 add up to block b's dot product, lanes 4-7 to b + 1's.
template <bool VNNI>
inline __m256i halves_dot(const Int8Format&, const Halves& q, const Halves& x) {
  // unsigned by signed bytes: |q| by x carrying q's sign
  return _mm256_add_epi32(dot_u8s8<VNNI>(_mm256_abs_epi8(q.first), _mm256_sign_epi8(x.first, q.first)),
                          dot_u8s8<VNNI>(_mm256_abs_epi8(q.last), _mm256_sign_epi8(x.last, q.last)));
}
template <bool VNNI>
inline __m256i halves_dot(const Int4Format&, const Halves& q, const Halves& x) {
  if constexpr (VNNI) return _mm256_add_epi32(dot_u8s8<VNNI>(q.first, x.first), dot_u8s8<VNNI>(q.last, x.last));
  // q <= 15: a 16-bit lane holds two products, at most 2 * 15 * 127, so the
  // halves' sums can be added before widening
  const __m256i sums = _mm256_add_epi16(_mm256_maddubs_epi16(q.first, x.first), _mm256_maddubs_epi16(q.last, x.last));
  return _mm256_madd_epi16(sums, _mm256_set1_epi16(1));
}

// A weight row's float16 scales of blocks b and b + 1 as {s[b] x 4, s[b + 1] x 4},
// lane for lane with halves_dot's sums ({s[b] x 4, 0 x 4} for a block alone).
template <bool SINGLE>
inline __m256 spread_scales(const at::Half* s) {
  int32_t bits = s[0].x;
  if constexpr (!SINGLE) std::memcpy(&bits, s, sizeof(bits));
  const __m256 both = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
  return _mm256_permutevar8x32_ps(both, _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0));
}

// One input row's pointers into QuantizedRows' pair layout.
struct PairRow {
  const int8_t* q;
  const float* scales;
  const float* sums;
};
inline PairRow pair_row(const QuantizedRows& x, int64_t row) {
  return {x.row_pairs(row), x.row_pair_scales(row), x.row_pair_sums(row)};
}

// Adds blocks 2p and 2p + 1 (2p alone if SINGLE) of OUTS weight rows from n times
// ROWS input rows to acc. The input's operands are single loads from the pair layout.
template <typename Format, bool VNNI, int OUTS, int ROWS, bool SINGLE>
inline void add_pair(const Format& w, int64_t n, int64_t p, const PairRow (&x)[ROWS], __m256 (&acc)[OUTS][ROWS]) {
  for (int o = 0; o < OUTS; ++o) {
    const Halves q = load_halves<SINGLE>(w, n + o, 2 * p);
    const __m256 dw = spread_scales<SINGLE>(w.scales + (n + o) * (w.in / kBlock) + 2 * p);
    for (int r = 0; r < ROWS; ++r) {
      const int8_t* pair = x[r].q + p * 2 * kBlock;
      const __m256i dot = halves_dot<VNNI>(w, q, Halves{bytes32(pair), bytes32(pair + kBlock)});
      acc[o][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_loadu_ps(x[r].scales + p * 8)),
                                  acc[o][r]);
    }
  }
}

// OUTS output rows from n times ROWS input rows from `row` on.
template <typename T, typename Format, bool VNNI, int OUTS, int ROWS>
inline void avx2_tile_rows(const Format& w, const QuantizedRows& x, int64_t row, T* out, int64_t out_features,
                           int64_t n) {
  __m256 acc[OUTS][ROWS];
  PairRow rows[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    rows[r] = pair_row(x, row + r);
    for (int o = 0; o < OUTS; ++o) acc[o][r] = _mm256_setzero_ps();
  }
  const int64_t full_pairs = x.blocks() / 2;
  for (int64_t p = 0; p < full_pairs; ++p) add_pair<Format, VNNI, OUTS, ROWS, false>(w, n, p, rows, acc);
  if (x.blocks() % 2) add_pair<Format, VNNI, OUTS, ROWS, true>(w, n, full_pairs, rows, acc);
  for (int o = 0; o < OUTS; ++o)
    for (int r = 0; r < ROWS; ++r)
      out[(row + r) * out_features + n + o] =
          static_cast<T>(Avx2Floats::sum(acc[o][r]) + min_term(w, x, row + r, n + o));
}

// The tile's kOuts weight rows, kTileOuts at a time, through the input rows kTileRows at
// a time: 2 x 4 accumulators and the two weight halves fit AVX2's 16 vector registers
// (the input is read from L1 as memory operands).
template <typename T, typename Format, bool VNNI>
void avx2_tile(const Format& w, const QuantizedRows& x, T* out, int64_t out_features, int64_t n) {
  constexpr int kTileOuts = 2, kTileRows = 4;
  for (int64_t o = n; o < n + kOuts; o += kTileOuts) {
    int64_t row = 0;
    for (; row + kTileRows <= x.rows; row += kTileRows)
      avx2_tile_rows<T, Format, VNNI, kTileOuts, kTileRows>(w, x, row, out, out_features, o);
    for (; row < x.rows; ++row) avx2_tile_rows<T, Format, VNNI, kTileOuts, 1>(w, x, row, out, out_features, o);
  }
}
// int4 without VNNI: the kOuts weight rows' dot products with an input row are
// summed across the four rows' vectors (vphaddw) before widening, so a block pair of
// four outputs takes 8 vpmaddubsw and one vpmaddwd, vcvtdq2ps, vmulps and vfmadd
// where one output at a time takes 20: on AVX2 cores these share one or two
// multiply pipes, which bound the kernel. The 16-bit sums hold: a lane gathers at
// most 16 products of q <= 15 and |xq| <= 127, 30,480. The minimums' term is one
// more vfmadd per block pair, not a pass of its own (min_term).
template <bool SINGLE>
inline __m256 int4_tile_halves(const at::Half* values, int64_t blocks, int64_t n, int64_t b) {
  // {v[n][b], v[n + 1][b], .., v[n + 3][b], v[n][b + 1], .., v[n + 3][b + 1]} of a [out, blocks] array
  int32_t bits[kOuts];
  for (int o = 0; o < kOuts; ++o) {
    bits[o] = values[(n + o) * blocks + b].x;
    if constexpr (!SINGLE) std::memcpy(&bits[o], values + (n + o) * blocks + b, sizeof(int32_t));
  }
  const __m256 pairs = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bits)));
  return _mm256_permutevar8x32_ps(pairs, _mm256_set_epi32(7, 5, 3, 1, 6, 4, 2, 0));
}

template <int ROWS, bool SINGLE>
inline void add_int4_pair(const Int4Format& w, int64_t n, int64_t p, const PairRow (&x)[ROWS], __m256 (&acc)[ROWS]) {
  Halves q[kOuts];
  for (int o = 0; o < kOuts; ++o) q[o] = load_halves<SINGLE>(w, n + o, 2 * p);
  const int64_t blocks = w.in / kBlock;
  const __m256 dw = int4_tile_halves<SINGLE>(w.scales, blocks, n, 2 * p);
  const __m256 mw = int4_tile_halves<SINGLE>(w.mins, blocks, n, 2 * p);
  for (int r = 0; r < ROWS; ++r) {
    const int8_t* pair = x[r].q + p * 2 * kBlock;
    const __m256i first = bytes32(pair), last = bytes32(pair + kBlock);
    __m256i sums[kOuts];
    for (int o = 0; o < kOuts; ++o)
      sums[o] = _mm256_add_epi16(_mm256_maddubs_epi16(q[o].first, first), _mm256_maddubs_epi16(q[o].last, last));
    const __m256i outs = _mm256_hadd_epi16(_mm256_hadd_epi16(sums[0], sums[1]), _mm256_hadd_epi16(sums[2], sums[3]));
    const __m256i dots = _mm256_madd_epi16(outs, _mm256_set1_epi16(1));  // {block 2p: n..n+3, block 2p+1: n..n+3}
    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(dw, _mm256_loadu_ps(x[r].scales + p * 8)), acc[r]);
    acc[r] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(x[r].sums + p * 8), acc[r]);
  }
}

template <typename T, int ROWS>
inline void avx2_int4_tile_rows(const Int4Format& w, const QuantizedRows& x, int64_t row, T* out,
                                int64_t out_features, int64_t n) {
  __m256 acc[ROWS];
  PairRow rows[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    rows[r] = pair_row(x, row + r);
    acc[r] = _mm256_setzero_ps();
  }
  const int64_t full_pairs = x.blocks() / 2;
  for (int64_t p = 0; p < full_pairs; ++p) add_int4_pair<ROWS, false>(w, n, p, rows, acc);
  if (x.blocks() % 2) add_int4_pair<ROWS, true>(w, n, full_pairs, rows, acc);
  for (int r = 0; r < ROWS; ++r) {
    float sums[kOuts];
    _mm_storeu_ps(sums, _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1)));
    for (int o = 0; o < kOuts; ++o) out[(row + r) * out_features + n + o] = static_cast<T>(sums[o]);
  }
}

template <typename T>
void avx2_int4_tile(const Int4Format& w, const QuantizedRows& x, T* out, int64_t out_features, int64_t n) {
  // 8 input rows a tile (measured on Zen 3 against 1-16: unpacking the four weight rows and
  // gathering their scales is paid once a tile), then what is left 4, 2 and 1 at a time
  int64_t row = 0;
  for (; row + 8 <= x.rows; row += 8) avx2_int4_tile_rows<T, 8>(w, x, row, out, out_features, n);
  if (row + 4 <= x.rows) avx2_int4_tile_rows<T, 4>(w, x, row, out, out_features, n), row += 4;
  if (row + 2 <= x.rows) avx2_int4_tile_rows<T, 2>(w, x, row, out, out_features, n), row += 2;
  if (row < x.rows) avx2_int4_tile_rows<T, 1>(w, x, row, out, out_features, n);
}
#endif

}  // namespace nanovllm
