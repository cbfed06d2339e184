"""Weight-only int8 and int4: the rounding, the kernel choice by batch size,
the C++ kernels against plain products, and the quantized SmolLM2 against the
unquantized one."""

import pytest
import torch
import torch.nn.functional as F

from conftest import CHAT_MESSAGES, chat_prompt
from nanovllm_core import LLM, SamplingParams, cpu_kernels
from nanovllm_core.layers.linear import linear
from nanovllm_core.layers.quantization import QUANTIZED_MAX_ROWS, quantize_int4_, quantize_int8_


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
    for rows in (1, QUANTIZED_MAX_ROWS, QUANTIZED_MAX_ROWS + 1, 33):
        x = torch.randn(rows, 64)
        torch.testing.assert_close(linear(x, weight, bias, int8), F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    garbage = quantize_int8_(torch.randn(96, 64))  # proves which kernel ran: its values differ from `weight`
    x = torch.randn(1, 64)
    assert not torch.allclose(linear(x, weight, bias, garbage), F.linear(x, weight, bias), atol=1e-2)
    x = torch.randn(QUANTIZED_MAX_ROWS + 1, 64)
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


def test_int4_rounding_is_per_group_of_32_and_recovers_q4_1_blocks():
    weight = torch.randn(8, 64) * torch.logspace(-2, 1, 8)[:, None]
    original = weight.clone()
    int4 = quantize_int4_(weight)
    assert int4.packed.shape == (8, 32) and int4.scales.shape == int4.mins.shape == (8, 2)
    low, high = int4.packed & 0x0F, int4.packed >> 4
    steps = torch.cat([low.view(8, 2, 16), high.view(8, 2, 16)], dim=-1).float()  # q in input order
    dequantized = steps * int4.scales.float()[..., None] + int4.mins.float()[..., None]
    torch.testing.assert_close(weight, dequantized.view(8, 64), rtol=0, atol=1e-6)  # the weight holds the rounded values
    assert ((weight - original).abs() <= int4.scales.float().repeat_interleave(32, dim=1) * 0.51 + 1e-3).all()
    # weights that are already Q4_1 blocks (float16 scale and minimum) come back unchanged
    q = torch.randint(0, 16, (8, 2, 32)).float()
    q[..., 0], q[..., 1] = 0, 15  # llama.cpp's quantizer puts the block's min at q=0 and max at q=15
    d, m = (torch.rand(8, 2, 1) / 10).half().float(), -torch.rand(8, 2, 1).half().float()
    blocks = (q * d + m).view(8, 64)
    exact = blocks.clone()
    quantize_int4_(blocks)
    torch.testing.assert_close(blocks, exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64, 96), (4, 576, 1536), (6, 1536, 575)], ids=str)
def test_cpu_int4_kernel_computes_the_rounded_weights_product(shape, dtype):
    rows, in_features, out_features = shape
    weight = torch.randn(out_features, in_features)
    int4 = quantize_int4_(weight)  # weight now holds the dequantized values
    x = torch.randn(rows, in_features).to(dtype)
    expected = x.float() @ weight.T
    for generic_only in (False, True):
        ours = cpu_kernels.int4_linear(x, int4.packed, int4.scales, int4.mins, generic_only=generic_only)
        assert ours.dtype == dtype and ours.shape == (rows, out_features)
        tolerance = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(ours.float(), expected, atol=tolerance * expected.abs().max().item(), rtol=tolerance)
    assert torch.allclose(linear(x.float(), weight, None, int4), expected, atol=1e-3)  # linear() takes the int4 path


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_smollm2_answers_like_the_original(method, smollm2_path, smollm2_tokenizer, smollm2_llm):
    prompts = [chat_prompt(smollm2_tokenizer, message) for message in CHAT_MESSAGES]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    quantized = LLM(str(smollm2_path), dtype="float32", quantization=method)
    kinds = {type(m.quantized).__name__ for m in quantized.engine.runner.model.modules() if hasattr(m, "quantized")}
    assert kinds == ({"Int4Weight", "Int8Weight"} if method == "int4" else {"Int8Weight"})  # int4 keeps an int8 LM head
    alone = [quantized.generate([p], params, use_tqdm=False)[0]["token_ids"] for p in prompts]  # quantized kernel
    batched = [o["token_ids"] for o in quantized.generate(prompts, params, use_tqdm=False)]  # the rounded fp32 weights
    assert batched == alone
    original = [o["token_ids"] for o in smollm2_llm.generate(prompts, params, use_tqdm=False)]
    agreeing = [next((i for i, (a, b) in enumerate(zip(q, o)) if a != b), len(o)) for q, o in zip(alone, original)]
    # the rounding keeps the greedy answers: at least the first 4 tokens of every prompt, and most of
    # the 16 overall (measured: see docs/benchmarks.md); int4 gives this Q4_1 GGUF its own blocks back
    assert min(agreeing) >= 4 and sum(agreeing) >= 0.6 * 16 * len(prompts), agreeing
