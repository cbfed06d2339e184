"""The C++ CPU kernels' fused elementwise ops against the PyTorch code they
replace, in float32 and bfloat16, and the model falling back to PyTorch when
the kernels cannot be built. (Attention: test_attention_backends.py; int8:
test_quantization.py.)"""

import pytest
import torch

from nanovllm_core import LLM, SamplingParams, cpu_kernels
from nanovllm_core.layers import RMSNorm, SiluAndMul, get_rope
from tiny_models import make_tiny_checkpoint

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.fixture(autouse=True)
def kernels():
    cpu_kernels.load()


def torch_path(monkeypatch):
    """Run the layers as if the kernels were not built."""
    monkeypatch.setattr(cpu_kernels, "loaded", lambda: False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_pytorch(dtype, with_residual, monkeypatch):
    norm = RMSNorm(576, eps=1e-5).to(dtype)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(37, 576).to(dtype) * 3
    residual = torch.randn(37, 576).to(dtype) if with_residual else None
    ours = norm(x, residual)
    torch_path(monkeypatch)
    expected = norm(x, residual)
    if with_residual:
        torch.testing.assert_close(ours[0], expected[0], **TOLERANCE[dtype])
        assert torch.equal(ours[1], expected[1])  # the residual sum is rounded the same way
    else:
        torch.testing.assert_close(ours, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_matches_pytorch_on_strided_views(dtype, monkeypatch):
    rope = get_rope(64, 2048, 10000.0, None)
    qkv = torch.randn(19, (9 + 3 + 3) * 64).to(dtype)  # q and k as views of a fused projection, as models have them
    q = qkv[:, : 9 * 64].view(19, 9, 64)
    k = qkv[:, 9 * 64 : 12 * 64].view(19, 3, 64)
    positions = torch.randint(0, 2048, (19,))
    ours = rope(positions, q, k)
    torch_path(monkeypatch)
    expected = rope(positions, q, k)
    for a, b in zip(ours, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TOLERANCE[dtype])


def test_rotary_rejects_positions_beyond_its_table():
    rope = get_rope(64, 128, 10000.0, None)
    q, k = torch.randn(1, 2, 64), torch.randn(1, 1, 64)
    with pytest.raises(RuntimeError, match="position out of range"):
        rope(torch.tensor([128]), q, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul_matches_pytorch_over_a_wide_range(dtype, monkeypatch):
    x = (torch.randn(23, 2 * 1536) * 30).to(dtype)  # includes gates far into exp's tails
    x[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])
    ours = SiluAndMul()(x)
    torch_path(monkeypatch)
    torch.testing.assert_close(ours, SiluAndMul()(x), **TOLERANCE[dtype])


def test_engine_runs_in_plain_pytorch_when_the_kernels_cannot_be_built(tmp_path, smollm2_tokenizer, monkeypatch):
    checkpoint = make_tiny_checkpoint("LlamaForCausalLM", tmp_path, smollm2_tokenizer)
    prompts = [[5, 17, 923, 4000, 31], [7] * 40]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    with_kernels = [o["token_ids"] for o in LLM(str(checkpoint), dtype="float32").generate(prompts, params, use_tqdm=False)]

    def no_compiler():
        raise RuntimeError("could not build the CPU kernels (no compiler)")

    monkeypatch.setattr(cpu_kernels, "load", no_compiler)
    torch_path(monkeypatch)
    llm = LLM(str(checkpoint), dtype="float32")
    assert llm.engine.runner.backend.name == "torch"
    assert [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)] == with_kernels


def test_layers_share_one_rotary_table():
    """Regression: each layer built its own cos/sin tables (28 x 21 MB for Qwen3-0.6B)."""
    from nanovllm_core.layers import RotaryEmbedding
    from nanovllm_qwen3.decoder import Qwen3ForCausalLM
    from tiny_models import tiny_config

    config = tiny_config("Qwen3ForCausalLM", vocab_size=128)
    config.num_hidden_layers = 4
    model = Qwen3ForCausalLM(config)
    tables = {m.cos.data_ptr() for m in model.modules() if isinstance(m, RotaryEmbedding)}
    assert len(tables) == 1
    other_base = get_rope(32, 512, 12345.0, None)
    assert other_base is not get_rope(32, 512, 1e6, None)  # a different configuration gets its own
