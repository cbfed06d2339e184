"""Quantized linears: the rounding into GGUF's blocks, each C++ kernel path against
a float64 reference, what a layer keeps, the default for a GGUF file, and the
quantized SmolLM2 against the unquantized one."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import CHAT_MESSAGES, chat_prompt
from nanovllm_core import LLM, SamplingParams, cpu_kernels
from nanovllm_core.layers.linear import ReplicatedLinear, linear
from nanovllm_core.layers.quantization import (
    BF16_MATMUL_MIN_ROWS,
    Int4Weight,
    Int8Weight,
    quantize_int4,
    quantize_int8,
    quantize_model_,
)
from nanovllm_core.loader.source import resolve_model

PATHS = cpu_kernels.quantized_linear_paths()  # every path this machine can run, the portable one included


def test_int8_rounding_is_per_block_of_32_and_within_half_a_step():
    weight = torch.randn(48, 64) * torch.logspace(-3, 1, 64)  # blocks of very different scales along the input
    int8 = quantize_int8(weight)
    assert int8.values.dtype == torch.int8 and int8.values.abs().max() == 127 and int8.scales.shape == (48, 2)
    step = int8.scales.float().repeat_interleave(32, dim=1)
    assert ((int8.dequantize() - weight).abs() <= step / 2 + 1e-6).all()
    # Q8_0 blocks come back unchanged
    assert torch.equal(quantize_int8(int8.dequantize()).values, int8.values)


def test_int4_rounding_is_per_block_of_32_and_recovers_q4_1_blocks():
    weight = torch.randn(8, 64) * torch.logspace(-2, 1, 8)[:, None]
    int4 = quantize_int4(weight)
    assert int4.packed.shape == (8, 32) and int4.scales.shape == int4.mins.shape == (8, 2)
    step = int4.scales.float().repeat_interleave(32, dim=1)
    assert ((int4.dequantize() - weight).abs() <= step * 0.51 + 1e-3).all()
    # weights that are already Q4_1 blocks (float16 scale and minimum) come back unchanged
    q = torch.randint(0, 16, (8, 2, 32)).float()
    q[..., 0], q[..., 1] = 0, 15  # llama.cpp's quantizer puts the block's min at q=0 and max at q=15
    d, m = (torch.rand(8, 2, 1) / 10).half().float(), -torch.rand(8, 2, 1).half().float()
    blocks = (q * d + m).view(8, 64)
    torch.testing.assert_close(quantize_int4(blocks).dequantize(), blocks, rtol=0, atol=1e-6)


def rounded_input(x: torch.Tensor) -> torch.Tensor:
    """The input as the kernels round it: int8 per block of 32, scale amax / 127 (float32 arithmetic)."""
    blocks = x.float().view(x.shape[0], -1, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return (torch.round(blocks * inverse).double() * (amax / 127).double()).view(x.shape)


def away_from_rounding_ties(x: torch.Tensor) -> torch.Tensor:
    """``x`` with any element that rounds to int8 within 0.001 of a tie moved 0.1 of a step up.

    There float32's operation order decides the int8 value (torch's reference and the kernel
    differ by an ulp: seen as a rare failure), and one step of a large input is far outside
    the comparison's tolerance."""
    blocks = x.view(x.shape[0], -1, 32)
    step = blocks.abs().amax(dim=-1, keepdim=True) / 127
    scaled = blocks / step.clamp(min=1e-30)
    near_tie = ((scaled - scaled.floor()) - 0.5).abs() < 1e-3
    return torch.where(near_tie, blocks + 0.1 * step, blocks).view(x.shape)


def exact_weight(quantized) -> torch.Tensor:
    if isinstance(quantized, Int8Weight):
        blocks = quantized.values.double().view(quantized.values.shape[0], -1, 32)
        return (blocks * quantized.scales.double()[..., None]).flatten(1)
    packed = quantized.packed.view(quantized.packed.shape[0], -1, 16)
    steps = torch.cat([packed & 0x0F, packed >> 4], dim=-1).double()
    return (steps * quantized.scales.double()[..., None] + quantized.mins.double()[..., None]).flatten(1)


def run_path(quantized, x: torch.Tensor, path: str) -> torch.Tensor:
    if isinstance(quantized, Int8Weight):
        return cpu_kernels.int8_linear(x, quantized.values, quantized.scales, path)
    return cpu_kernels.int4_linear(x, quantized.packed, quantized.scales, quantized.mins, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4], ids=["int8", "int4"])
# odd row counts (tails of the row tiles), output counts off the 4-row tiles, 32 inputs (one block: no 64-wide pair)
@pytest.mark.parametrize("shape", [(1, 64, 96), (3, 576, 1536), (6, 1536, 575), (9, 32, 7), (37, 96, 13)], ids=str)
def test_kernel_path_against_float64(shape, quantize, dtype, path):
    rows, in_features, out_features = shape
    quantized = quantize(torch.randn(out_features, in_features))
    x = torch.randn(rows, in_features)
    x[0, :32] = 0  # an all-zero block of the input
    x = away_from_rounding_ties(x).to(dtype)
    ours = run_path(quantized, x, path)
    assert ours.dtype == dtype and ours.shape == (rows, out_features)
    # the only difference from the exact product of the rounded operands is float32 accumulation (and the output dtype)
    expected = rounded_input(x) @ exact_weight(quantized).T
    # (int4: the minimums' term and the dot products cancel, in float32, to a tenth of their size)
    tolerance = 1e-4 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(ours.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())
    # and rounding the input to int8 stays close to the unrounded product
    unrounded = x.double() @ exact_weight(quantized).T
    assert (ours.double() - unrounded).abs().max() <= 0.02 * unrounded.abs().max()


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4], ids=["int8", "int4"])
def test_dequantized_bf16_weights_and_the_batches_that_use_them(quantize, monkeypatch):
    quantized = quantize(torch.randn(40, 96))
    expected = exact_weight(quantized).to(torch.bfloat16)
    ours = (cpu_kernels.int8_dequantize(quantized.values, quantized.scales) if isinstance(quantized, Int8Weight)
            else cpu_kernels.int4_dequantize(quantized.packed, quantized.scales, quantized.mins))
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, expected)
    monkeypatch.setattr(cpu_kernels, "cpu_has_bf16", lambda: True)  # the rule, on any CPU
    many = torch.randn(BF16_MATMUL_MIN_ROWS, 96)
    torch.testing.assert_close(quantized(many.bfloat16()), F.linear(many.bfloat16(), expected))  # bf16 weights
    torch.testing.assert_close(quantized(many), run_path(quantized, many, PATHS[0]))  # float32: integer kernel
    few = many[: BF16_MATMUL_MIN_ROWS - 1].bfloat16()
    torch.testing.assert_close(quantized(few), run_path(quantized, few, PATHS[0]))


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_linear_computes_with_the_quantized_weight_at_every_row_count(rows):
    layer = ReplicatedLinear(64, 96, bias=True)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    layer.quantized = quantize_int4(layer.weight.data)
    x = torch.randn(rows, 64)
    expected = F.linear(x, layer.quantized.dequantize(), layer.bias)
    torch.testing.assert_close(layer(x), expected, atol=0.02 * expected.abs().max().item(), rtol=0.02)
    assert not torch.allclose(linear(x, layer.weight, layer.bias, quantize_int4(torch.randn(96, 64))), expected, atol=0.1)


def test_quantized_layers_keep_no_full_precision_weight_unless_shared():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(96, 64)
            self.proj = ReplicatedLinear(64, 64)
            self.odd = ReplicatedLinear(48, 64)  # 48 inputs: not whole blocks, stays unquantized
            self.head = ReplicatedLinear(64, 96)
            self.head.weight = self.embed.weight  # tied, as SmolLM2's LM head is to its embeddings

    model = Tied()
    assert quantize_model_(model, "int4") == 2
    assert model.proj.weight.numel() == 0 and isinstance(model.proj.quantized, Int4Weight)
    assert model.odd.quantized is None and model.odd.weight.shape == (64, 48)
    assert model.head.weight is model.embed.weight and model.embed.weight.shape == (96, 64)


@pytest.fixture(scope="module")
def quantized_smollm2(smollm2_path):
    """SmolLM2 in float32 with int8 linears, or with the file's own int4 (the default, asked
    for by not asking); one of each, loaded when first used. Without prefix caching: a
    prompt's second run would attend over cached K/V by another path, whose last-bit
    differences can flip an activation's int8 rounding and then a near-tie token."""
    loaded: dict[str, LLM] = {}

    def get(method: str) -> LLM:
        if method not in loaded:
            chosen = {} if method == "int4" else {"quantization": method}
            loaded[method] = LLM(str(smollm2_path), dtype="float32", max_num_seqs=8, enable_prefix_caching=False,
                                 **chosen)
        return loaded[method]

    return get


def test_a_q4_1_gguf_runs_as_its_own_int4_by_default(smollm2_path, quantized_smollm2, smollm2_llm):
    assert resolve_model(str(smollm2_path)).quantization() == "int4"
    layers = [m for m in quantized_smollm2("int4").engine.runner.model.modules() if hasattr(m, "quantized")]
    assert {type(m.quantized).__name__ for m in layers} == {"Int4Weight", "Int8Weight"}  # an int8 LM head
    assert sum(isinstance(m.quantized, Int4Weight) for m in layers) == 30 * 4  # qkv, o, gate_up, down
    assert all(m.weight.numel() == 0 for m in layers if isinstance(m.quantized, Int4Weight))
    # quantization="none" (the session's float32 model) keeps every layer unquantized
    assert all(m.quantized is None for m in smollm2_llm.engine.runner.model.modules() if hasattr(m, "quantized"))


def scored(llm: LLM, token_ids: list[list[int]]) -> list[list]:
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2)
    return [result["prompt_logprobs"] for result in llm.generate(token_ids, params, use_tqdm=False)]


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_smollm2_answers_like_the_original(method, quantized_smollm2, smollm2_tokenizer, smollm2_llm):
    """The unquantized model's greedy answers, scored token by token (teacher-forced) by both.
    int4 on this Q4_1 file computes with the very same weights, so only the int8 rounding of
    the activations differs, as in llama.cpp."""
    prompts = [chat_prompt(smollm2_tokenizer, message) for message in CHAT_MESSAGES]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    answers = [o["prompt_token_ids"] + o["token_ids"] for o in smollm2_llm.generate(prompts, params, use_tqdm=False)]
    quantized = quantized_smollm2(method)
    alone = [quantized.generate([p], params, use_tqdm=False)[0]["token_ids"] for p in prompts]
    batched = [o["token_ids"] for o in quantized.generate(prompts, params, use_tqdm=False)]
    assert batched == alone  # each row's integer arithmetic does not depend on its neighbours
    drift, clear, kept = [], 0, 0
    for original, ours in zip(scored(smollm2_llm, answers), scored(quantized, answers)):
        for theirs, mine in list(zip(original, ours))[-16:]:  # the answer's tokens
            drift.append(abs(theirs.logprob - mine.logprob))
            runner_up = max((value for token, value in theirs.top_logprobs if token != theirs.token_id), default=-1e9)
            if theirs.rank == 1 and theirs.logprob - runner_up > 0.5:  # a clear choice must survive the rounding
                clear += 1
                kept += mine.rank == 1
    assert kept == clear > 0.5 * len(drift), (kept, clear, len(drift))
    assert sum(drift) / len(drift) < 0.1, sum(drift) / len(drift)
