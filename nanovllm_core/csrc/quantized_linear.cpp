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
// reading the weights). Each ISA's path is in its own header.

#include "quantized_avx2.h"
#include "quantized_avx512.h"
#include "quantized_formats.h"
#include "quantized_neon.h"

#include <type_traits>

namespace nanovllm {

std::vector<int64_t> quantized_linear_paths();

namespace {

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

std::vector<std::string> quantized_linear_path_names() { return path_names(); }

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
