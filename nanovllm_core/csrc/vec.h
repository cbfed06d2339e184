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

// exp(x) for float32, one value; vector_exp below is the same steps on a vector.
// x*log2(e) = n + f with |f| <= 0.5; e^(f ln 2) by its Taylor series to degree 6
// (relative error below 2e-7); 2^n by building the float's exponent. x is
// clamped to [-87, 88], where float32's exp neither underflows nor overflows.
// (gcc 12 vectorizes neither std::exp nor this without -ffast-math, which it
// links as a process-wide flush-to-zero switch, hence the intrinsics.)
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

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__F16C__))
// out[i] = the sum of v[i]'s eight lanes, for eight vectors at once: three rounds
// of pairwise adds, where one vector at a time takes three each.
inline void store_sums8(const __m256* v, float* out) {
  const __m256 first = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 second = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  // first: rows 0-3's sums over lanes 0-3, then over lanes 4-7; second: the same for rows 4-7
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(first, second, 0x20),
                                      _mm256_permute2f128_ps(first, second, 0x31)));
}
#endif

// float32 vectors of one ISA, loading float, float16 or bfloat16 data as float32.
#if defined(__AVX512F__)
struct Avx512Floats {
  using Reg = __m512;
  static constexpr int64_t kWidth = 16;
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load(const at::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static Reg load(const at::BFloat16* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static Reg broadcast(float x) { return _mm512_set1_ps(x); }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static Reg round(Reg v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 2^n for whole-numbered n in float32's exponent range
  static Reg pow2(Reg n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  static float sum(Reg v) { return _mm512_reduce_add_ps(v); }
  static float max_lane(Reg v) { return _mm512_reduce_max_ps(v); }
  static void store_sums8(const Reg* v, float* out) {
    __m256 halves[8];
    for (int i = 0; i < 8; ++i)
      halves[i] = _mm256_add_ps(_mm512_castps512_ps256(v[i]), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[i]), 1)));
    nanovllm::store_sums8(halves, out);
  }
};
#endif

#if defined(__AVX2__) && defined(__F16C__)
struct Avx2Floats {
  using Reg = __m256;
  static constexpr int64_t kWidth = 8;
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(const at::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static Reg load(const at::BFloat16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static Reg broadcast(float x) { return _mm256_set1_ps(x); }
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  static Reg round(Reg v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static Reg pow2(Reg n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  static float sum(Reg v) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
  }
  static float max_lane(Reg v) {
    const __m128 half = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 quarter = _mm_max_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_max_ss(quarter, _mm_movehdup_ps(quarter)));
  }
  static void store_sums8(const Reg* v, float* out) { nanovllm::store_sums8(v, out); }
};
#endif

// The widest float32 vectors this build's CPU has, if any.
#if defined(__AVX512F__)
using NativeFloats = Avx512Floats;
#define NANOVLLM_NATIVE_FLOATS 1
#elif defined(__AVX2__) && defined(__F16C__)
using NativeFloats = Avx2Floats;
#define NANOVLLM_NATIVE_FLOATS 1
#endif

#if defined(NANOVLLM_NATIVE_FLOATS)
template <typename V>
inline typename V::Reg vector_exp(typename V::Reg x) {
  using Reg = typename V::Reg;
  x = V::min(V::max(x, V::broadcast(-87.f)), V::broadcast(88.f));
  const Reg t = V::mul(x, V::broadcast(1.44269504088896341f));
  const Reg whole = V::round(t);
  const Reg f = V::mul(V::sub(t, whole), V::broadcast(0.693147180559945309f));
  Reg p = V::broadcast(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = V::fmadd(p, f, V::broadcast(c));
  return V::mul(p, V::pow2(whole));
}
#endif

// The largest of row[0..n), n >= 1.
inline float max_of(const float* row, int64_t n) {
  float largest = row[0];
  int64_t i = 0;
#if defined(NANOVLLM_NATIVE_FLOATS)
  using V = NativeFloats;
  if (n >= V::kWidth) {
    typename V::Reg lanes = V::load(row);
    for (i = V::kWidth; i + V::kWidth <= n; i += V::kWidth) lanes = V::max(lanes, V::load(row + i));
    largest = V::max_lane(lanes);
  }
#endif
  for (; i < n; ++i) largest = row[i] > largest ? row[i] : largest;
  return largest;
}

// row[i] = exp(row[i] - shift) for i < n; returns their sum.
inline float exp_shifted(float* row, int64_t n, float shift) {
  float sum = 0.f;
  int64_t i = 0;
#if defined(NANOVLLM_NATIVE_FLOATS)
  using V = NativeFloats;
  typename V::Reg sums = V::zero();
  const typename V::Reg by = V::broadcast(shift);
  for (; i + V::kWidth <= n; i += V::kWidth) {
    const typename V::Reg e = vector_exp<V>(V::sub(V::load(row + i), by));
    V::store(row + i, e);
    sums = V::add(sums, e);
  }
  sum = V::sum(sums);
#endif
  for (; i < n; ++i) {
    row[i] = fast_exp(row[i] - shift);
    sum += row[i];
  }
  return sum;
}

// x[i] = silu(x[i]) = x[i] / (1 + exp(-x[i])) for i < n.
inline void silu(float* x, int64_t n) {
  int64_t i = 0;
#if defined(NANOVLLM_NATIVE_FLOATS)
  using V = NativeFloats;
  const typename V::Reg one = V::broadcast(1.f);
  for (; i + V::kWidth <= n; i += V::kWidth) {
    const typename V::Reg v = V::load(x + i);
    V::store(x + i, V::div(v, V::add(one, vector_exp<V>(V::sub(V::zero(), v)))));
  }
#endif
  for (; i < n; ++i) x[i] = x[i] / (1.f + fast_exp(-x[i]));
}

}  // namespace nanovllm
