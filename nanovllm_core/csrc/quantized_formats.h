// The quantized linears' shared parts: the input rows rounded to int8, the weight formats, the kernel paths, the portable tile.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "vec.h"

namespace nanovllm {


constexpr int64_t kBlock = 32;         // weights (and inputs) per scale
constexpr int64_t kOuts = 4;           // output rows per tile
constexpr int64_t kPrefetchTiles = 8;  // how far ahead a thread asks for the next tiles' weights

// The kernel paths; a build has those its compiler flags allow. Python and the tests know
// them by name: path_names()[path], exported as quantized_linear_path_names().
enum Path : int64_t { kPortable = 0, kAvx2 = 1, kAvx512Vnni = 2, kNeonDot = 3 };
inline const std::vector<std::string>& path_names() {
  static const std::vector<std::string> names{"portable", "avx2", "avx512_vnni", "neon_dot"};
  return names;
}


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


}  // namespace nanovllm
