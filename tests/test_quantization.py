"""Weight-only int8: the rounding, the kernel choice by batch size, and the
quantized SmolLM2 against the unquantized one."""

import pytest
import torch
import torch.nn.functional as F

from conftest import CHAT_MESSAGES, chat_prompt
from nanovllm_core import LLM, SamplingParams, cpu_kernels
from nanovllm_core.layers.linear import INT8_MAX_ROWS, linear, quantize_int8_


def test_rounding_is_per_output_channel_and_within_half_a_step():
    weight = torch.randn(48, 32) * torch.logspace(-3, 1, 48)[:, None]  # channels of very different scales
    original = weight.clone()
    int8 = quantize_int8_(weight)
    assert int8.values.dtype == torch.int8 and int8.values.abs().max() <= 127
    assert torch.equal(weight, int8.values.float() * int8.scales[:, None])  # the weight now holds the rounded values
    assert ((weight - original).abs() <= int8.scales[:, None] / 2 + 1e-7).all()


def test_few_rows_use_the_int8_kernel_and_many_the_same_rounded_weight():
    weight, bias = torch.randn(96, 64), torch.randn(96)
    int8 = quantize_int8_(weight)
    for rows in (1, INT8_MAX_ROWS, INT8_MAX_ROWS + 1, 33):
        x = torch.randn(rows, 64)
        torch.testing.assert_close(linear(x, weight, bias, int8), F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    garbage = quantize_int8_(torch.randn(96, 64))  # proves which kernel ran: its values differ from `weight`
    x = torch.randn(1, 64)
    assert not torch.allclose(linear(x, weight, bias, garbage), F.linear(x, weight, bias), atol=1e-2)
    x = torch.randn(INT8_MAX_ROWS + 1, 64)
    torch.testing.assert_close(linear(x, weight, bias, garbage), F.linear(x, weight, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64, 96), (3, 576, 1536), (4, 1536, 575), (6, 40, 9)], ids=str)
def test_cpu_int8_kernel_computes_the_rounded_weights_product(shape, dtype):
    """Ours (AVX-512 code where in_features % 16 == 0, portable loops otherwise and
    when asked) against the float32 product; rows beyond 4 take a second pass."""
    rows, in_features, out_features = shape
    int8 = quantize_int8_(torch.randn(out_features, in_features))
    x = torch.randn(rows, in_features).to(dtype)
    scales = int8.scales.to(dtype)
    expected = (x.float() @ int8.values.float().T) * scales.float()
    for generic_only in (False, True):
        ours = cpu_kernels.int8_linear(x, int8.values, scales, generic_only=generic_only)
        assert ours.dtype == dtype and ours.shape == (rows, out_features)
        tolerance = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(ours.float(), expected, atol=tolerance * expected.abs().max().item(), rtol=tolerance)


def test_quantized_smollm2_answers_like_the_original(smollm2_path, smollm2_tokenizer, smollm2_llm):
    prompts = [chat_prompt(smollm2_tokenizer, message) for message in CHAT_MESSAGES]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    quantized = LLM(str(smollm2_path), dtype="float32", quantization="int8")
    alone = [quantized.generate([p], params, use_tqdm=False)[0]["token_ids"] for p in prompts]  # int8 kernel
    batched = [o["token_ids"] for o in quantized.generate(prompts, params, use_tqdm=False)]  # the rounded fp32 weights
    assert batched == alone
    original = [o["token_ids"] for o in smollm2_llm.generate(prompts, params, use_tqdm=False)]
    agreeing = [next((i for i, (a, b) in enumerate(zip(q, o)) if a != b), len(o)) for q, o in zip(alone, original)]
    # int8 per-channel rounding keeps the greedy answers: at least the first 4 tokens of every prompt,
    # and most of the 16 overall (measured: see docs/benchmarks.md)
    assert min(agreeing) >= 4 and sum(agreeing) >= 0.6 * 16 * len(prompts), agreeing
