// The decoder's elementwise steps, each one pass over its rows instead of the
// five to twenty small PyTorch ops (with their float32 copies) it takes
// otherwise: at batch 1 those ops' fixed costs weigh more than their arithmetic.
// Each computes in float32 and rounds where the PyTorch code rounds, so
// bfloat16 results match it up to float32 summation order.

#include <ATen/Parallel.h>

#include <vector>

#include "vec.h"

namespace nanovllm {
namespace {

constexpr int64_t kRowsPerTask = 16;  // a single row is too little work to hand to a second thread

template <typename T>
inline float round_trip(float x) {  // x as the PyTorch code would hold it: rounded to T
  return to_float(static_cast<T>(x));
}

template <typename T>
void rms_norm_rows(const T* x, const T* residual, const T* weight, T* out, T* residual_out, int64_t rows,
                   int64_t width, float eps) {
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t first, int64_t last) {
    std::vector<float> row(width);
    for (int64_t r = first; r < last; ++r) {
      load_floats(x + r * width, row.data(), width);
      if (residual != nullptr) {
        for (int64_t i = 0; i < width; ++i) {
          const T sum = static_cast<T>(row[i] + to_float(residual[r * width + i]));
          residual_out[r * width + i] = sum;
          row[i] = to_float(sum);
        }
      }
      float squares = 0.f;
#pragma omp simd reduction(+ : squares)
      for (int64_t i = 0; i < width; ++i) squares += row[i] * row[i];
      const float inverse_rms = 1.f / std::sqrt(squares / static_cast<float>(width) + eps);
      for (int64_t i = 0; i < width; ++i)
        out[r * width + i] = static_cast<T>(round_trip<T>(row[i] * inverse_rms) * to_float(weight[i]));
    }
  });
}

template <typename T>
void silu_and_mul_rows(const T* in, T* out, int64_t rows, int64_t width) {
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t first, int64_t last) {
    std::vector<float> gate(width), up(width);
    for (int64_t r = first; r < last; ++r) {
      load_floats(in + r * 2 * width, gate.data(), width);
      load_floats(in + r * 2 * width + width, up.data(), width);
      silu(gate.data(), width);
      for (int64_t i = 0; i < width; ++i) out[r * width + i] = static_cast<T>(round_trip<T>(gate[i]) * up[i]);
    }
  });
}

}  // namespace

// ((x + residual) if residual else x) normalised by its RMS, times weight; with
// residual, also the sum (the next layer's residual).
std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& input, const c10::optional<at::Tensor>& residual,
                                            const at::Tensor& weight, double eps) {
  const int64_t width = input.size(-1);
  TORCH_CHECK(weight.numel() == width && weight.scalar_type() == input.scalar_type(), "rms_norm: weight [width], same dtype");
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty_like(x);
  at::Tensor sum = residual.has_value() ? at::empty_like(x) : at::Tensor();
  const at::Tensor res = residual.has_value() ? residual->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), res.defined() ? res.data_ptr<scalar_t>() : nullptr,
                            w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                            sum.defined() ? sum.data_ptr<scalar_t>() : nullptr, x.numel() / width, width,
                            static_cast<float>(eps));
  });
  return {out, sum};
}

namespace {

// Rotary embedding (rotate-half layout) of x [tokens, heads, head_dim] (any token
// and head strides, contiguous head_dim) into a new contiguous tensor.
at::Tensor rotate(const at::Tensor& x, const int64_t* p, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "rotary: x [tokens, heads, head_dim] with contiguous head_dim");
  const int64_t tokens = x.size(0), heads = x.size(1), head_dim = x.size(2), half = head_dim / 2;
  TORCH_CHECK(cos.size(1) == half && sin.size(1) == half, "rotary: cos/sin [positions, head_dim / 2]");
  at::Tensor out = at::empty({tokens, heads, head_dim}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rotary_embedding", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, tokens, kRowsPerTask, [&](int64_t first, int64_t last) {
      for (int64_t t = first; t < last; ++t) {
        const float* c = cos.data_ptr<float>() + p[t] * half;
        const float* s = sin.data_ptr<float>() + p[t] * half;
        for (int64_t h = 0; h < heads; ++h) {
          const scalar_t* x1 = in + t * x.stride(0) + h * x.stride(1);
          scalar_t* o1 = o + (t * heads + h) * head_dim;
          for (int64_t i = 0; i < half; ++i) {
            const float a = to_float(x1[i]), b = to_float(x1[half + i]);
            o1[i] = static_cast<scalar_t>(a * c[i] - b * s[i]);
            o1[half + i] = static_cast<scalar_t>(b * c[i] + a * s[i]);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

// Rotary embedding of query and key [tokens, heads, head_dim] at `positions`, in one
// call (two show in a one-token decode step); cos/sin [positions, head_dim / 2] float32.
std::tuple<at::Tensor, at::Tensor> rotary_embedding(const at::Tensor& query, const at::Tensor& key,
                                                    const at::Tensor& positions, const at::Tensor& cos,
                                                    const at::Tensor& sin) {
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
              sin.is_contiguous(), "rotary: cos/sin contiguous float32");
  const at::Tensor pos = positions.to(at::kLong).contiguous();
  const int64_t* p = pos.data_ptr<int64_t>();
  TORCH_CHECK(pos.numel() == query.size(0) && pos.numel() == key.size(0), "rotary: a position per token");
  for (int64_t t = 0; t < pos.numel(); ++t) TORCH_CHECK(p[t] >= 0 && p[t] < cos.size(0), "rotary: position out of range");
  return {rotate(query, p, cos, sin), rotate(key, p, cos, sin)};
}

// SwiGLU on a fused [gate | up] projection: silu(gate) * up.
at::Tensor silu_and_mul(const at::Tensor& input) {
  const int64_t width = input.size(-1) / 2;
  const at::Tensor x = input.contiguous();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = width;
  at::Tensor out = at::empty(shape, x.options());
  const int64_t rows = x.numel() / (2 * width);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_and_mul", [&] {
    silu_and_mul_rows<scalar_t>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rows, width);
  });
  return out;
}

}  // namespace nanovllm
