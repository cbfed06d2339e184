// Loading bfloat16/half/float data as float32, shared by the CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace nanovllm {

inline float to_float(float x) { return x; }
inline float to_float(at::Half x) {
#if defined(__F16C__)
  // one instruction; at::Half's own conversion is a dozen integer ops outside ATen's vectorized files
  return _cvtsh_ss(x.x);
#else
  return static_cast<float>(x);
#endif
}
inline float to_float(at::BFloat16 x) {
  // bfloat16 is the top half of a float32: a shift the compiler vectorizes
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

template <typename T>
inline void load_floats(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

// Ask for `bytes` bytes from `data` on, one cache line at a time, ahead of their use.
inline void prefetch(const void* data, int64_t bytes) {
  const char* start = static_cast<const char*>(data);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(start + offset);
}

inline float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// exp(x), vectorizable inside `omp simd` loops: std::exp does not vectorize
// without -ffast-math (which gcc links as a process-wide flush-to-zero switch).
// x*log2(e) = n + f with |f| <= 0.5; 2^f by its Taylor series to degree 6
// (relative error below 2e-7); 2^n by building the float's exponent. x is
// clamped to [-87, 88], where float32's exp neither underflows nor overflows.
inline float fast_exp(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float t = x * 1.44269504088896341f;
  const float whole = (t + 12582912.f) - 12582912.f;  // round to nearest: 1.5 * 2^23
  const float f = (t - whole) * 0.693147180559945309f;
  const float p = 1.f + f * (1.f + f * (0.5f + f * (1.f / 6 + f * (1.f / 24 + f * (1.f / 120 + f * (1.f / 720))))));
  const int32_t bits = (static_cast<int32_t>(whole) + 127) << 23;
  float power;
  std::memcpy(&power, &bits, sizeof(power));
  return p * power;
}

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline __m512 load16(const at::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

#endif

}  // namespace nanovllm
