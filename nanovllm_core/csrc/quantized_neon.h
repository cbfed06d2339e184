// The ARM dot-product (sdot) path of the quantized linears.
#pragma once

#include "quantized_formats.h"

#if defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#endif

namespace nanovllm {

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

}  // namespace nanovllm
