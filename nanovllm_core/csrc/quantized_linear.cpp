// Quantized linear layers computed with integer dot products, at any row count:
// out = x @ dequantize(weight)^T.
//
// Weights stay in blocks of 32 along the input, as GGUF stores them:
// - int8 (Q8_0): w = q * d, q int8 in [-127, 127], one float16 d per block;
// - int4 (Q4_1): w = q * d + m, q in [0, 15], float16 d and m per block; byte i
//   of a block's 16 holds q[i] in its low nibble and q[i + 16] in its high one.
// Each call rounds the input rows to int8 in blocks of 32 too (x ~ xq * dx), so
// a block adds  dw * dx * sum(q * xq)  (+ m * dx * sum(xq) for int4) to an
// output, and the sum is exact integer arithmetic on 32 bytes at a time:
// AVX-512 VNNI's vpdpbusd, AVX2's vpmaddubsw + vpmaddwd, ARM's sdot, or a
// portable loop. The x86 instructions multiply unsigned by signed bytes: int4's
// q is unsigned already; int8 goes in as |q| times xq carrying q's sign.
//
// Work is split over threads by output rows. A thread takes a tile of four
// output rows (a few KB of weights, kept in L1) through every input row in
// turn, so the weights are read from memory once per call whatever the rows,
// and prefetches the tiles it reads next (at one row the call is bound by
// reading the weights).

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "vec.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#endif

namespace nanovllm {

std::vector<int64_t> quantized_linear_paths();

namespace {

constexpr int64_t kBlock = 32;         // weights (and inputs) per scale
constexpr int64_t kOuts = 4;           // output rows per tile
constexpr int64_t kPrefetchTiles = 8;  // how far ahead a thread asks for the next tiles' weights

// The kernel paths, best first; a build has those its compiler flags allow.
enum Path : int64_t { kPortable = 0, kAvx2 = 1, kAvx512Vnni = 2, kNeonDot = 3 };


// The input rows rounded to int8 per block of 32: x ~ q * scale; sums = scale * sum(q) per block.
// The AVX2 paths read a second copy (with_pairs), arranged so that each operand is one
// load: per row and pair of blocks b, b + 1, 64 bytes {b's first 16, b + 1's first 16,
// b's last 16, b + 1's last 16} and 8 floats {b's scale x 4, b + 1's x 4} (and the
// same of the sums); a lone last block has zeros for b + 1. The dot products then
// keep each block in its own 128-bit lane.
struct QuantizedRows {
  int64_t rows, in;
  std::vector<int8_t> q;       // [rows, in]
  std::vector<float> scales;   // [rows, in / 32]
  std::vector<float> sums;     // [rows, in / 32]
  std::vector<int8_t> pair_q;        // [rows, pairs, 64] with_pairs only
  std::vector<float> pair_scales;    // [rows, pairs, 8]
  std::vector<float> pair_sums;      // [rows, pairs, 8]

  template <typename T>
  QuantizedRows(const T* x, int64_t rows, int64_t in, bool with_pairs)
      : rows(rows), in(in), q(rows * in), scales(rows * in / kBlock), sums(rows * in / kBlock) {
    at::parallel_for(0, rows * (in / kBlock), 256, [&](int64_t first, int64_t last) {
      float values[kBlock];
      for (int64_t b = first; b < last; ++b) {
        load_floats(x + b * kBlock, values, kBlock);
        float amax = 0.f;
        for (float v : values) amax = std::max(amax, std::abs(v));
        const float scale = amax / 127.f, inverse = amax > 0.f ? 127.f / amax : 0.f;
        int32_t total = 0;
        for (int64_t i = 0; i < kBlock; ++i) {
          const int32_t rounded = static_cast<int32_t>(std::nearbyint(values[i] * inverse));
          q[b * kBlock + i] = static_cast<int8_t>(rounded);
          total += rounded;
        }
        scales[b] = scale;
        sums[b] = scale * static_cast<float>(total);
      }
    });
    if (with_pairs) arrange_pairs();
  }
  int64_t blocks() const { return in / kBlock; }
  int64_t pairs() const { return (blocks() + 1) / 2; }
  const int8_t* block(int64_t row, int64_t b) const { return q.data() + row * in + b * kBlock; }
  float scale(int64_t row, int64_t b) const { return scales[row * blocks() + b]; }
  float sum(int64_t row, int64_t b) const { return sums[row * blocks() + b]; }
  const int8_t* row_pairs(int64_t row) const { return pair_q.data() + row * pairs() * 2 * kBlock; }
  const float* row_pair_scales(int64_t row) const { return pair_scales.data() + row * pairs() * 8; }
  const float* row_pair_sums(int64_t row) const { return pair_sums.data() + row * pairs() * 8; }

 private:
  void arrange_pairs() {
    constexpr int64_t kHalf = kBlock / 2;
    pair_q.assign(rows * pairs() * 2 * kBlock, 0);
    pair_scales.assign(rows * pairs() * 8, 0.f);
    pair_sums.assign(rows * pairs() * 8, 0.f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < blocks(); ++b) {
        int8_t* pair = pair_q.data() + (r * pairs() + b / 2) * 2 * kBlock + (b % 2) * kHalf;
        std::memcpy(pair, block(r, b), kHalf);
        std::memcpy(pair + kBlock, block(r, b) + kHalf, kHalf);
        const int64_t lanes = (r * pairs() + b / 2) * 8 + (b % 2) * 4;
        std::fill_n(pair_scales.data() + lanes, 4, scale(r, b));
        std::fill_n(pair_sums.data() + lanes, 4, sum(r, b));
      }
  }
};

struct Int8Format {
  const int8_t* values;    // [out, in]
  const at::Half* scales;  // [out, in / 32]
  int64_t in;

  static constexpr bool kHasMins = false;
  static constexpr const at::Half* mins = nullptr;
  int64_t row_bytes() const { return in; }
  const void* row(int64_t n) const { return values + n * in; }
  float scale(int64_t n, int64_t b) const { return to_float(scales[n * (in / kBlock) + b]); }
  int8_t q(int64_t n, int64_t k) const { return values[n * in + k]; }
};

struct Int4Format {
  const uint8_t* packed;   // [out, in / 2]
  const at::Half* scales;  // [out, in / 32]
  const at::Half* mins;    // [out, in / 32]
  int64_t in;

  static constexpr bool kHasMins = true;
  int64_t row_bytes() const { return in / 2; }
  const void* row(int64_t n) const { return packed + n * (in / 2); }
  float scale(int64_t n, int64_t b) const { return to_float(scales[n * (in / kBlock) + b]); }
  int8_t q(int64_t n, int64_t k) const {
    const uint8_t byte = packed[n * (in / 2) + (k / kBlock) * (kBlock / 2) + (k % kBlock) % (kBlock / 2)];
    return static_cast<int8_t>((k % kBlock) < kBlock / 2 ? byte & 0x0F : byte >> 4);
  }
};

// The minimum's share of an int4 output: sum over blocks of m * dx * sum(xq).
template <typename Format>
float min_term(const Format& w, const QuantizedRows& x, int64_t row, int64_t n) {
  if constexpr (!Format::kHasMins) return 0.f;
  const int64_t blocks = w.in / kBlock;
  const at::Half* mins = w.mins + n * blocks;
  const float* sums = x.sums.data() + row * blocks;
  int64_t b = 0;
  float total = 0.f;
#if defined(__AVX2__) && defined(__F16C__)
  __m256 acc = _mm256_setzero_ps();
  for (; b + 8 <= blocks; b += 8) {
    const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mins + b)));
    acc = _mm256_fmadd_ps(m, _mm256_loadu_ps(sums + b), acc);
  }
  total = Avx2Floats::sum(acc);
#endif
  for (; b < blocks; ++b) total += to_float(mins[b]) * sums[b];
  return total;
}

template <typename T, typename Format>
void portable_tile(const Format& w, const QuantizedRows& x, T* out, int64_t out_features, int64_t n, int64_t outs) {
  for (int64_t o = n; o < n + outs; ++o)
    for (int64_t r = 0; r < x.rows; ++r) {
      float total = min_term(w, x, r, o);
      for (int64_t b = 0; b < w.in / kBlock; ++b) {
        const int8_t* xq = x.block(r, b);
        int32_t dot = 0;
        for (int64_t i = 0; i < kBlock; ++i) dot += static_cast<int32_t>(w.q(o, b * kBlock + i)) * xq[i];
        total += w.scale(o, b) * x.scale(r, b) * static_cast<float>(dot);
      }
      out[r * out_features + o] = static_cast<T>(total);
    }
}

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

#if defined(__ARM_FEATURE_DOTPROD)
// sdot multiplies signed bytes: int4's q (0..15) and int8's q go in as they are.
inline int8x16x2_t load_block(const Int8Format& w, int64_t n, int64_t b) {
  const int8_t* q = w.values + n * w.in + b * kBlock;
  return {vld1q_s8(q), vld1q_s8(q + 16)};
}
inline int8x16x2_t load_block(const Int4Format& w, int64_t n, int64_t b) {
  const uint8x16_t bytes = vld1q_u8(w.packed + n * (w.in / 2) + b * kBlock / 2);
  return {vreinterpretq_s8_u8(vandq_u8(bytes, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4))};
}

template <typename T, typename Format>
void neon_tile(const Format& w, const QuantizedRows& x, T* out, int64_t out_features, int64_t n) {
  for (int64_t row = 0; row < x.rows; ++row) {
    float32x4_t acc[kOuts];
    for (int o = 0; o < kOuts; ++o) acc[o] = vdupq_n_f32(0.f);
    for (int64_t b = 0; b < w.in / kBlock; ++b) {
      const int8_t* xq = x.block(row, b);
      const int8x16_t x0 = vld1q_s8(xq), x1 = vld1q_s8(xq + 16);
      const float dx = x.scale(row, b);
      for (int o = 0; o < kOuts; ++o) {
        const int8x16x2_t q = load_block(w, n + o, b);
        const int32x4_t dot = vdotq_s32(vdotq_s32(vdupq_n_s32(0), q.val[0], x0), q.val[1], x1);
        acc[o] = vfmaq_n_f32(acc[o], vcvtq_f32_s32(dot), w.scale(n + o, b) * dx);
      }
    }
    for (int o = 0; o < kOuts; ++o)
      out[row * out_features + n + o] = static_cast<T>(vaddvq_f32(acc[o]) + min_term(w, x, row, n + o));
  }
}
#endif

template <typename T, typename Format>
void tile(const Format& w, const QuantizedRows& x, T* out, int64_t out_features, int64_t n, int64_t outs, Path path) {
  if (outs == kOuts) {
#if defined(__AVX2__) && defined(__F16C__)
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    if (path == kAvx512Vnni && w.in % (2 * kBlock) == 0) return avx512_tile<T, Format>(w, x, out, out_features, n);
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    if (path == kAvx512Vnni) return avx2_tile<T, Format, true>(w, x, out, out_features, n);
#endif
    if constexpr (std::is_same_v<Format, Int4Format>)
      if (path == kAvx2) return avx2_int4_tile<T>(w, x, out, out_features, n);
    if (path == kAvx2) return avx2_tile<T, Format, false>(w, x, out, out_features, n);
#endif
#if defined(__ARM_FEATURE_DOTPROD)
    if (path == kNeonDot) return neon_tile<T, Format>(w, x, out, out_features, n);
#endif
  }
  portable_tile(w, x, out, out_features, n, outs);
}

// The x86 paths may take an AVX2 tile (AVX-512's own needs inputs in multiples of 64),
// which reads QuantizedRows' pair layout.
bool uses_pair_layout(Path path) { return path == kAvx2 || path == kAvx512Vnni; }

template <typename Format>
at::Tensor run(const Format& w, const at::Tensor& input, int64_t out_features, Path path) {
  const int64_t rows = input.size(0), in = input.size(1);
  const at::Tensor x = input.contiguous();
  at::Tensor out = at::empty({rows, out_features}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "quantized_linear", [&] {
    const QuantizedRows rounded(x.data_ptr<scalar_t>(), rows, in, uses_pair_layout(path));
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t tiles = (out_features + kOuts - 1) / kOuts;
    at::parallel_for(0, tiles, 16, [&](int64_t first, int64_t last) {
      for (int64_t t = first; t < last; ++t) {
        if (t + kPrefetchTiles < last) prefetch(w.row((t + kPrefetchTiles) * kOuts), kOuts * w.row_bytes());
        const int64_t n = t * kOuts;
        tile(w, rounded, o, out_features, n, std::min(kOuts, out_features - n), path);
      }
    });
  });
  return out;
}

// float32 to bfloat16, rounding to nearest even (the weights are finite): plain
// integer arithmetic, which the compiler vectorizes.
inline uint16_t bf16_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

// A block of 32 weights as floats, in input order.
inline void dequantize_block(const Int8Format& w, int64_t n, int64_t b, float* out) {
  const int8_t* q = w.values + n * w.in + b * kBlock;
  const float d = w.scale(n, b);
  for (int64_t i = 0; i < kBlock; ++i) out[i] = static_cast<float>(q[i]) * d;
}
inline void dequantize_block(const Int4Format& w, int64_t n, int64_t b, float* out) {
  const uint8_t* bytes = w.packed + n * (w.in / 2) + b * kBlock / 2;
  const float d = w.scale(n, b), m = to_float(w.mins[n * (w.in / kBlock) + b]);
  for (int64_t i = 0; i < kBlock / 2; ++i) {
    out[i] = static_cast<float>(bytes[i] & 0x0F) * d + m;
    out[i + kBlock / 2] = static_cast<float>(bytes[i] >> 4) * d + m;
  }
}

// The weights as bfloat16 [out, in], for a batch large enough that the CPU's bf16
// matmul beats the integer kernel even after this pass (quantization.py).
template <typename Format>
at::Tensor dequantize_bf16(const Format& w, int64_t out_features) {
  at::Tensor out = at::empty({out_features, w.in}, at::kBFloat16);
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, out_features, 16, [&](int64_t first, int64_t last) {
    float values[kBlock];
    for (int64_t n = first; n < last; ++n)
      for (int64_t b = 0; b < w.in / kBlock; ++b) {
        dequantize_block(w, n, b, values);
        for (int64_t i = 0; i < kBlock; ++i) o[n * w.in + b * kBlock + i] = bf16_bits(values[i]);
      }
  });
  return out;
}

Path checked_path(int64_t path) {
  const std::vector<int64_t> paths = quantized_linear_paths();
  TORCH_CHECK(std::find(paths.begin(), paths.end(), path) != paths.end(),
              "quantized linear: kernel path ", path, " is not in this build");
  return static_cast<Path>(path);
}

Int8Format int8_format(const at::Tensor& values, const at::Tensor& scales) {
  const int64_t out_features = values.size(0), in = values.size(1);
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kChar && values.is_contiguous() && in % kBlock == 0,
              "int8 weights: int8 values [out, in], in a multiple of 32");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() && scales.numel() == out_features * (in / kBlock),
              "int8 weights: float16 scales [out, in / 32]");
  return Int8Format{values.data_ptr<int8_t>(), scales.data_ptr<at::Half>(), in};
}

Int4Format int4_format(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& mins) {
  const int64_t out_features = packed.size(0), in = packed.size(1) * 2;
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.is_contiguous() && in % kBlock == 0,
              "int4 weights: uint8 packed [out, in / 2], in a multiple of 32");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && mins.scalar_type() == at::kHalf && scales.is_contiguous() &&
              mins.is_contiguous() && scales.numel() == out_features * (in / kBlock) && mins.numel() == scales.numel(),
              "int4 weights: float16 scales and mins [out, in / 32]");
  return Int4Format{packed.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(), mins.data_ptr<at::Half>(), in};
}

void check_input(const at::Tensor& input, int64_t in) {
  TORCH_CHECK(input.dim() == 2 && input.size(1) == in, "quantized linear: input [rows, ", in, "]");
}

}  // namespace

std::vector<int64_t> quantized_linear_paths() {
  std::vector<int64_t> paths;
#if defined(__ARM_FEATURE_DOTPROD)
  paths.push_back(kNeonDot);
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  paths.push_back(kAvx512Vnni);
#endif
#if defined(__AVX2__) && defined(__F16C__)
  paths.push_back(kAvx2);
#endif
  paths.push_back(kPortable);
  return paths;
}

at::Tensor int8_linear(const at::Tensor& input, const at::Tensor& values, const at::Tensor& scales, int64_t path) {
  const Int8Format w = int8_format(values, scales);
  check_input(input, w.in);
  return run(w, input, values.size(0), checked_path(path));
}

at::Tensor int4_linear(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& scales,
                       const at::Tensor& mins, int64_t path) {
  const Int4Format w = int4_format(packed, scales, mins);
  check_input(input, w.in);
  return run(w, input, packed.size(0), checked_path(path));
}

at::Tensor int8_dequantize(const at::Tensor& values, const at::Tensor& scales) {
  return dequantize_bf16(int8_format(values, scales), values.size(0));
}

at::Tensor int4_dequantize(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& mins) {
  return dequantize_bf16(int4_format(packed, scales, mins), packed.size(0));
}

}  // namespace nanovllm
