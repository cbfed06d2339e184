// The CPU kernels as torch operators: torch.ops.nanovllm_cpu.*

#include <ATen/ATen.h>
#include <torch/library.h>

namespace nanovllm {
at::Tensor paged_decode_attention(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                                  bool generic_only);
at::Tensor int8_linear(const at::Tensor& input, const at::Tensor& values, const at::Tensor& scales, bool generic_only);
}  // namespace nanovllm

TORCH_LIBRARY(nanovllm_cpu, m) {
  m.def("paged_decode_attention(Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, float scale, bool generic_only=False) -> Tensor");
  m.def("int8_linear(Tensor input, Tensor values, Tensor scales, bool generic_only=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(nanovllm_cpu, CPU, m) {
  m.impl("paged_decode_attention", &nanovllm::paged_decode_attention);
  m.impl("int8_linear", &nanovllm::int8_linear);
}
