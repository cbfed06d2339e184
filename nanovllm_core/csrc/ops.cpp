// The CPU kernels as torch operators: torch.ops.nanovllm_cpu.*

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace nanovllm {
at::Tensor paged_decode_attention(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                                  int64_t window, bool generic_only);
void store_kv(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache,
              const at::Tensor& slot_mapping);
std::vector<std::string> quantized_linear_path_names();
std::vector<int64_t> quantized_linear_paths();
at::Tensor int8_linear(const at::Tensor& input, const at::Tensor& values, const at::Tensor& scales, int64_t path);
at::Tensor int4_linear(const at::Tensor& input, const at::Tensor& packed, const at::Tensor& scales,
                       const at::Tensor& mins, int64_t path);
at::Tensor int8_dequantize(const at::Tensor& values, const at::Tensor& scales);
at::Tensor int4_dequantize(const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& mins);
std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& input, const c10::optional<at::Tensor>& residual,
                                            const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> rotary_embedding(const at::Tensor& query, const at::Tensor& key,
                                                    const at::Tensor& positions, const at::Tensor& cos,
                                                    const at::Tensor& sin);
at::Tensor silu_and_mul(const at::Tensor& input);
}  // namespace nanovllm

TORCH_LIBRARY(nanovllm_cpu, m) {
  m.def("paged_decode_attention(Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, float scale, int window=0, bool generic_only=False) -> Tensor");
  m.def("store_kv(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()");
  m.def("quantized_linear_path_names() -> str[]", &nanovllm::quantized_linear_path_names);
  m.def("quantized_linear_paths() -> int[]", &nanovllm::quantized_linear_paths);
  m.def("int8_linear(Tensor input, Tensor values, Tensor scales, int path) -> Tensor");
  m.def("int4_linear(Tensor input, Tensor packed, Tensor scales, Tensor mins, int path) -> Tensor");
  m.def("int8_dequantize(Tensor values, Tensor scales) -> Tensor");
  m.def("int4_dequantize(Tensor packed, Tensor scales, Tensor mins) -> Tensor");
  m.def("rms_norm(Tensor input, Tensor? residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rotary_embedding(Tensor query, Tensor key, Tensor positions, Tensor cos, Tensor sin) -> (Tensor, Tensor)");
  m.def("silu_and_mul(Tensor input) -> Tensor");
}

TORCH_LIBRARY_IMPL(nanovllm_cpu, CPU, m) {
  m.impl("paged_decode_attention", &nanovllm::paged_decode_attention);
  m.impl("store_kv", &nanovllm::store_kv);
  m.impl("int8_linear", &nanovllm::int8_linear);
  m.impl("int4_linear", &nanovllm::int4_linear);
  m.impl("int8_dequantize", &nanovllm::int8_dequantize);
  m.impl("int4_dequantize", &nanovllm::int4_dequantize);
  m.impl("rms_norm", &nanovllm::rms_norm);
  m.impl("rotary_embedding", &nanovllm::rotary_embedding);
  m.impl("silu_and_mul", &nanovllm::silu_and_mul);
}
