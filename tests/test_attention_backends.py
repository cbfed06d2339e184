"""Every attention backend gives the torch backend's output on the same paged
batch: decodes and prefill chunks together, cached prefixes, block boundaries,
GQA ratios, head sizes and block sizes. Triton runs under TRITON_INTERPRET=1
without a GPU (see conftest)."""

from dataclasses import dataclass

import pytest
import torch

from nanovllm_core import cpu_kernels
from nanovllm_core.attention import AttentionMetadata
from nanovllm_core.attention.cpu_backend import CpuAttentionBackend
from nanovllm_core.attention.flash_attn_backend import FlashAttentionBackend
from nanovllm_core.attention.torch_backend import TorchAttentionBackend
from nanovllm_core.attention.triton_backend import TritonAttentionBackend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NUM_BLOCKS = 128


@dataclass
class Batch:
    """Sequences as (tokens already cached, new tokens this step); decodes first."""

    shapes: list[tuple[int, int]]
    heads: int
    kv_heads: int
    head_dim: int
    block_size: int


BATCHES = [
    Batch([(0, 1), (20, 1), (47, 1)], heads=4, kv_heads=4, head_dim=64, block_size=16),  # decodes only
    Batch([(0, 9), (0, 40)], heads=8, kv_heads=2, head_dim=64, block_size=16),  # fresh prompts
    Batch([(31, 1), (5, 1), (16, 12), (0, 23), (40, 17)], heads=12, kv_heads=4, head_dim=128, block_size=8),
    Batch([(63, 1), (32, 33), (7, 3)], heads=9, kv_heads=3, head_dim=64, block_size=32),  # SmolLM2's heads
    Batch([(15, 2), (16, 16)], heads=2, kv_heads=1, head_dim=128, block_size=4),  # chunks ending on boundaries
]


def make_metadata(batch: Batch, num_blocks: int, generator: torch.Generator) -> AttentionMetadata:
    order = torch.randperm(num_blocks, generator=generator).tolist()  # scattered, not contiguous, blocks
    tables, slots = [], []
    for cached, new in batch.shapes:
        blocks = [order.pop() for _ in range(-(-(cached + new) // batch.block_size))]
        tables.append(blocks)
        slots += [blocks[p // batch.block_size] * batch.block_size + p % batch.block_size for p in range(cached, cached + new)]
    width = max(len(t) for t in tables)
    query_lens = [new for _, new in batch.shapes]
    context_lens = [cached + new for cached, new in batch.shapes]
    starts = torch.tensor([0] + query_lens).cumsum(0)
    return AttentionMetadata(
        num_decode_tokens=sum(1 for n in query_lens if n == 1),
        slot_mapping=torch.tensor(slots, device=DEVICE),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=DEVICE),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=DEVICE),
        query_start_loc=starts.to(torch.int32).to(DEVICE),
        max_query_len=max(query_lens),
        max_context_len=max(context_lens),
        query_lens_host=query_lens,
        context_lens_host=context_lens,
    )


def prefix_slots(batch: Batch, metadata: AttentionMetadata) -> torch.Tensor:
    tables = metadata.block_tables.tolist()
    return torch.tensor(
        [tables[i][p // batch.block_size] * batch.block_size + p % batch.block_size
         for i, (cached, _) in enumerate(batch.shapes) for p in range(cached)],
        dtype=torch.int64, device=DEVICE,
    )


@dataclass
class Case:
    batch: Batch
    metadata: AttentionMetadata
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    prefix_key: torch.Tensor  # K/V of the cached tokens, sequence after sequence
    prefix_value: torch.Tensor


def make_case(batch: Batch, dtype: torch.dtype, seed: int = 0) -> Case:
    generator = torch.Generator().manual_seed(seed)
    metadata = make_metadata(batch, NUM_BLOCKS, generator)
    tokens, cached = sum(n for _, n in batch.shapes), sum(c for c, _ in batch.shapes)

    def randn(rows, heads):
        return torch.randn(rows, heads, batch.head_dim, generator=generator).to(dtype).to(DEVICE)

    return Case(batch, metadata, randn(tokens, batch.heads), randn(tokens, batch.kv_heads), randn(tokens, batch.kv_heads),
                randn(cached, batch.kv_heads), randn(cached, batch.kv_heads))


def run(backend_cls, case: Case, sliding_window: int | None = None, cache_dtype: torch.dtype | None = None,
        generic_only: bool = False) -> torch.Tensor:
    """``generic_only``: the cpu backend's kernel runs its portable loops (decodes only)."""
    batch = case.batch
    backend = backend_cls(batch.heads, batch.kv_heads, batch.head_dim, batch.block_size)
    k_cache = torch.zeros(backend.kv_cache_shape(NUM_BLOCKS), dtype=cache_dtype or case.query.dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    if case.prefix_key.shape[0]:
        backend.store(case.prefix_key, case.prefix_value, k_cache, v_cache, prefix_slots(batch, case.metadata))
    window = {} if sliding_window is None else {"sliding_window": sliding_window}
    if generic_only:
        m = case.metadata
        backend.store(case.key, case.value, k_cache, v_cache, m.slot_mapping)
        return cpu_kernels.paged_decode_attention(case.query, k_cache, v_cache, m.block_tables, m.context_lens,
                                                  batch.head_dim**-0.5, generic_only=True, **window).float().cpu()
    out = backend.forward(case.query, case.key, case.value, k_cache, v_cache, case.metadata, batch.head_dim**-0.5,
                          **window)
    return out.float().cpu()


# windows smaller than a block, spanning blocks, and wider than some contexts (so no-op there)
WINDOWS = [1, 5, 16, 40]


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"{b.heads}h{b.kv_heads}kv{b.head_dim}d-bs{b.block_size}-{len(b.shapes)}seqs")
def test_triton_matches_torch(batch):
    case = make_case(batch, torch.float32)
    torch.testing.assert_close(run(TritonAttentionBackend, case), run(TorchAttentionBackend, case), atol=2e-5, rtol=1e-4)


# Triton's CPU interpreter computes through numpy, which has no bfloat16 (its
# bfloat16 results are garbage while float16 is right); on a GPU both are checked.
HALF_DTYPES = [torch.float16, torch.bfloat16] if DEVICE.type == "cuda" else [torch.float16]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_triton_matches_torch_in_half_precision(dtype):
    case = make_case(BATCHES[2], dtype)
    torch.testing.assert_close(run(TritonAttentionBackend, case), run(TorchAttentionBackend, case), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("sliding_window", WINDOWS)
@pytest.mark.parametrize("batch", BATCHES[1:], ids=lambda b: f"{b.heads}h{b.kv_heads}kv-bs{b.block_size}")
def test_triton_matches_torch_with_a_sliding_window(batch, sliding_window):
    case = make_case(batch, torch.float32)
    torch.testing.assert_close(run(TritonAttentionBackend, case, sliding_window),
                               run(TorchAttentionBackend, case, sliding_window), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("sliding_window", [None, *WINDOWS])
@pytest.mark.parametrize("batch", BATCHES[1:4], ids=["fresh", "mixed", "smollm2-heads"])
def test_torch_backend_matches_plain_attention(batch, sliding_window):
    """The reference itself, against softmax(QK^T)V written out per sequence:
    causal, and with a window the query at i sees keys i - W + 1 .. i."""
    case = make_case(batch, torch.float32)
    out = run(TorchAttentionBackend, case, sliding_window)
    group = batch.heads // batch.kv_heads
    query, key, value = case.query.cpu(), case.key.cpu(), case.value.cpu()
    prefix_key, prefix_value = case.prefix_key.cpu(), case.prefix_value.cpu()
    q_at = k_at = 0
    for cached, new in batch.shapes:
        k = torch.cat([prefix_key[k_at:k_at + cached], key[q_at:q_at + new]]).repeat_interleave(group, dim=1)
        v = torch.cat([prefix_value[k_at:k_at + cached], value[q_at:q_at + new]]).repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", query[q_at:q_at + new], k) * batch.head_dim**-0.5
        key_positions, query_positions = torch.arange(cached + new)[None, :], torch.arange(cached, cached + new)[:, None]
        visible = key_positions <= query_positions
        if sliding_window is not None:
            visible &= key_positions > query_positions - sliding_window
        expected = torch.einsum("hqk,khd->qhd", scores.masked_fill(~visible, float("-inf")).softmax(-1), v)
        torch.testing.assert_close(out[q_at:q_at + new], expected, atol=1e-5, rtol=1e-4)
        q_at, k_at = q_at + new, k_at + cached


def test_gpu_only_backends_fail_clearly_on_the_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="'triton' needs a CUDA GPU.*--attention-backend torch"):
        TritonAttentionBackend.check_available(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="flash-attn"):
        FlashAttentionBackend.check_available(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="multiple of 256.*--block-size 256"):  # checked before it is built
        FlashAttentionBackend.check_config(16, torch.bfloat16)


CPU_ONLY = pytest.mark.skipif(DEVICE.type != "cpu", reason="the C++ kernels are for CPUs")
# the kernel's shapes beside the shared batches: long contexts (many blocks,
# softmax over hundreds of scores), a group of 1 and of 8, head_dim 32 and 256
CPU_DECODE_BATCHES = BATCHES + [
    Batch([(40, 1), (9, 1)], heads=4, kv_heads=1, head_dim=256, block_size=16),  # Gemma 3 270M's heads
    Batch([(700, 1), (1, 1), (255, 1), (256, 1)], heads=9, kv_heads=3, head_dim=64, block_size=16),
    Batch([(100, 1), (3, 1)], heads=8, kv_heads=1, head_dim=32, block_size=8),
]


@CPU_ONLY
@pytest.mark.parametrize("batch", CPU_DECODE_BATCHES, ids=lambda b: f"{b.heads}h{b.kv_heads}kv{b.head_dim}d-bs{b.block_size}-{len(b.shapes)}seqs")
def test_cpu_kernel_matches_torch(batch):
    case = make_case(batch, torch.float32)
    torch.testing.assert_close(run(CpuAttentionBackend, case), run(TorchAttentionBackend, case), atol=2e-5, rtol=1e-4)


@CPU_ONLY
@pytest.mark.parametrize("sliding_window", [*WINDOWS, 300])
@pytest.mark.parametrize("batch", CPU_DECODE_BATCHES[-2:] + BATCHES[2:3], ids=["long", "group8", "mixed"])
def test_cpu_kernel_matches_torch_with_a_sliding_window(batch, sliding_window):
    case = make_case(batch, torch.float32)
    torch.testing.assert_close(run(CpuAttentionBackend, case, sliding_window),
                               run(TorchAttentionBackend, case, sliding_window), atol=2e-5, rtol=1e-4)


@CPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_store_writes_what_torchs_does(dtype):
    """K/V as the model hands them (views into a fused qkv output, rows strided), at scattered
    slots; a negative slot (padding) writes nothing."""
    generator = torch.Generator().manual_seed(3)
    kv_heads, head_dim, tokens = 3, 64, 37
    fused = torch.randn(tokens, (9 + 2 * kv_heads) * head_dim, generator=generator).to(dtype)
    _, key, value = fused.split([9 * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    key, value = key.view(tokens, kv_heads, head_dim), value.view(tokens, kv_heads, head_dim)
    slots = torch.randperm(NUM_BLOCKS * 16, generator=generator)[:tokens]
    torch_backend, cpu_backend = (cls(9, kv_heads, head_dim, 16) for cls in (TorchAttentionBackend, CpuAttentionBackend))
    expected = [torch.zeros(torch_backend.kv_cache_shape(NUM_BLOCKS), dtype=dtype) for _ in range(2)]
    ours = [torch.zeros_like(expected[0]) for _ in range(2)]
    torch_backend.store(key, value, *expected, slots)
    cpu_backend.store(key, value, *ours, slots)
    assert torch.equal(ours[0], expected[0]) and torch.equal(ours[1], expected[1])
    padded = slots.clone()
    padded[5] = -1
    kept = [torch.zeros_like(expected[0]) for _ in range(2)]
    cpu_backend.store(key, value, *kept, padded)
    assert torch.equal(kept[0].view(kv_heads, -1, head_dim)[:, slots[5]], torch.zeros(kv_heads, head_dim, dtype=dtype))
    assert torch.count_nonzero(kept[0]) == torch.count_nonzero(ours[0]) - kv_heads * head_dim


@CPU_ONLY
def test_cpu_kernel_never_reads_blocks_before_the_window():
    """Blocks wholly before the window are skipped: poison them with NaN and the output stays finite and equal."""
    batch = CPU_DECODE_BATCHES[-2]  # contexts of 701, 2, 256 and 257 tokens, blocks of 16
    case = make_case(batch, torch.float32)
    backend = CpuAttentionBackend(batch.heads, batch.kv_heads, batch.head_dim, batch.block_size)
    k_cache = torch.zeros(backend.kv_cache_shape(NUM_BLOCKS))
    v_cache = torch.zeros_like(k_cache)
    backend.store(case.prefix_key, case.prefix_value, k_cache, v_cache, prefix_slots(batch, case.metadata))
    m, window = case.metadata, 20
    expected = run(TorchAttentionBackend, case, window)
    for seq, context_len in enumerate(m.context_lens_host):
        for index in range(max(0, context_len - window) // batch.block_size):
            block = m.block_tables[seq, index]
            k_cache[:, block] = v_cache[:, block] = float("nan")
    ours = backend.forward(case.query, case.key, case.value, k_cache, v_cache, m, batch.head_dim**-0.5,
                           sliding_window=window)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


@CPU_ONLY
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_kernel_matches_float32_attention_in_half_precision(dtype):
    """The kernel accumulates in float32, so its half-precision output is the float32 answer rounded once."""
    batch = CPU_DECODE_BATCHES[-2]
    case = make_case(batch, dtype)
    exact = make_case(batch, torch.float32)
    for name in ("query", "key", "value", "prefix_key", "prefix_value"):  # the same (rounded) inputs in float32
        setattr(exact, name, getattr(case, name).float())
    ours = run(CpuAttentionBackend, case)
    expected = run(TorchAttentionBackend, exact)
    torch.testing.assert_close(ours, expected, atol=1e-2, rtol=1e-2)
    assert (ours - expected).abs().max() <= expected.abs().max() * 2**-7  # one half-precision rounding, not more


@CPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_portable_loops_match_its_vector_code(dtype):
    """Both code paths of the kernel, called directly: on an AVX-512 or AVX2 CPU the default one is the intrinsics."""
    batch = CPU_DECODE_BATCHES[-2]
    case = make_case(batch, dtype)
    backend = TorchAttentionBackend(batch.heads, batch.kv_heads, batch.head_dim, batch.block_size)
    k_cache = torch.zeros(backend.kv_cache_shape(NUM_BLOCKS), dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    backend.store(case.prefix_key, case.prefix_value, k_cache, v_cache, prefix_slots(batch, case.metadata))
    expected = backend.forward(case.query, case.key, case.value, k_cache, v_cache, case.metadata, 0.125).float()
    m = case.metadata
    for generic_only in (False, True):
        ours = cpu_kernels.paged_decode_attention(case.query, k_cache, v_cache, m.block_tables, m.context_lens, 0.125,
                                                  generic_only=generic_only)
        tolerance = 2e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(ours.float(), expected, atol=tolerance, rtol=tolerance)
    windowed = backend.forward(case.query, case.key, case.value, k_cache, v_cache, m, 0.125, sliding_window=37).float()
    ours = cpu_kernels.paged_decode_attention(case.query, k_cache, v_cache, m.block_tables, m.context_lens, 0.125,
                                              sliding_window=37, generic_only=True)
    torch.testing.assert_close(ours.float(), windowed, atol=tolerance, rtol=tolerance)


@CPU_ONLY
@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [CPU_DECODE_BATCHES[-2], BATCHES[2]], ids=["long-decodes", "mixed"])
def test_float32_queries_on_a_16_bit_cache(batch, cache_dtype):
    """A quantized float32 model keeps its CPU cache in float16: stores round the K/V to the
    cache's dtype, and both backends (the kernel's vector and portable paths too) attend in
    float32 over the same rounded values, decodes and prefills over a cached prefix alike."""
    case = make_case(batch, torch.float32)
    on_torch = run(TorchAttentionBackend, case, cache_dtype=cache_dtype)
    torch.testing.assert_close(run(CpuAttentionBackend, case, cache_dtype=cache_dtype), on_torch, atol=2e-5, rtol=1e-4)
    if batch is CPU_DECODE_BATCHES[-2]:
        generic = run(CpuAttentionBackend, case, cache_dtype=cache_dtype, generic_only=True)
        torch.testing.assert_close(generic, on_torch, atol=2e-5, rtol=1e-4)
    # against a float32 cache: the 16-bit one costs its rounding, no more
    torch.testing.assert_close(on_torch, run(TorchAttentionBackend, case), atol=2e-2, rtol=2e-2)


def test_auto_picks_the_cpu_kernels_and_falls_back_to_torch(monkeypatch):
    from nanovllm_core.engine.platform import select_attention_backend

    assert select_attention_backend("auto", torch.device("cpu")) is CpuAttentionBackend

    def no_compiler():
        raise RuntimeError("could not build the CPU kernels (no compiler)")

    monkeypatch.setattr(cpu_kernels, "load", no_compiler)
    assert select_attention_backend("auto", torch.device("cpu")) is TorchAttentionBackend
    with pytest.raises(RuntimeError, match="no compiler"):
        select_attention_backend("cpu", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="flash-attn"):
        select_attention_backend("flash-attn", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"{b.heads}h{b.kv_heads}kv{b.head_dim}d-{len(b.shapes)}seqs")
def test_flash_attn_matches_torch_on_gpu(batch):
    pytest.importorskip("flash_attn")
    wide = Batch(batch.shapes, batch.heads, batch.kv_heads, batch.head_dim, block_size=256)
    case = make_case(wide, torch.float16)
    torch.testing.assert_close(run(FlashAttentionBackend, case), run(TorchAttentionBackend, case), atol=2e-2, rtol=2e-2)
