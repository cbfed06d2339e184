"""Triton kernels over the paged KV cache, laid out [num_blocks, block_size, kv_heads, head_dim].

They read K/V where they lie (through the block table), never gather them, and
need no host synchronisation, so decode batches can be captured in CUDA graphs.
On a machine without a GPU they run under ``TRITON_INTERPRET=1`` (slowly), which
is how the tests check them against the torch backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_key, stride_value,
    ROW: tl.constexpr, ROW_PAD: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token)
    if slot >= 0:  # negative slots pad CUDA-graph batches
        offsets = tl.arange(0, ROW_PAD)
        mask = offsets < ROW
        key = tl.load(key_ptr + token * stride_key + offsets, mask=mask)
        value = tl.load(value_ptr + token * stride_value + offsets, mask=mask)
        tl.store(k_cache_ptr + slot * ROW + offsets, key, mask=mask)
        tl.store(v_cache_ptr + slot * ROW + offsets, value, mask=mask)


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """key/value [tokens, kv_heads, head_dim] into the caches at ``slot_mapping``."""
    tokens, kv_heads, head_dim = key.shape
    row = kv_heads * head_dim
    key, value = key.reshape(tokens, row), value.reshape(tokens, row)
    _store_kv_kernel[(tokens,)](
        key, value, k_cache, v_cache, slot_mapping, key.stride(0), value.stride(0),
        ROW=row, ROW_PAD=triton.next_power_of_2(row),
    )


def _window(sliding_window: int | None) -> int:
    """The kernels' window argument: no window is one wider than any context, which
    keeps a single compiled kernel for windowed and global layers."""
    return sliding_window or 1 << 30


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # float32 caches get exact float32 products (the default would use TF32 on GPUs)
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _attend_block(
    q, running_max, running_sum, acc, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head, positions, valid, visible,
    scale, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, IEEE: tl.constexpr, dims, dim_mask,
):
    """One step of online softmax: read the keys and values at ``positions``
    through the sequence's block table and fold them into (max, sum, acc)."""
    blocks = tl.load(block_table_ptr + positions // BLOCK_SIZE, mask=valid, other=0)
    slots = blocks.to(tl.int64) * BLOCK_SIZE + positions % BLOCK_SIZE
    kv_offsets = (slots[:, None] * KV_HEADS + kv_head) * HEAD_DIM + dims[None, :]
    kv_mask = valid[:, None] & dim_mask[None, :]
    k = tl.load(k_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
    scores = _dot(q, tl.trans(k), IEEE).to(tl.float32) * scale
    scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(running_max, tl.max(scores, 1))
    # a row that has seen no visible key yet (a sliding window starts later in the tile)
    # keeps -inf as its max; shifting by 0 instead makes its terms exp(-inf) = 0, not NaN
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    probs = tl.exp(scores - shift[:, None])
    correction = tl.exp(running_max - shift)
    running_sum = running_sum * correction + tl.sum(probs, 1)
    acc = acc * correction[:, None] + _dot(probs.to(v.dtype), v, IEEE).to(tl.float32)
    return new_max, running_sum, acc


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, out_ptr,
    scale, window, stride_q, stride_out, stride_tables,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One program per (sequence, KV head): the GROUP query heads sharing that
    KV head attend together, so each key is read once for all of them."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    context_len = tl.load(context_lens_ptr + seq)
    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    row_mask = rows < GROUP
    dim_mask = dims < HEAD_DIM
    q_offsets = seq * stride_q + (kv_head * GROUP + rows)[:, None] * HEAD_DIM + dims[None, :]
    q = tl.load(q_ptr + q_offsets, mask=row_mask[:, None] & dim_mask[None, :], other=0.0)

    running_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    running_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
    first = tl.maximum(context_len - window, 0)  # the query sits at context_len - 1
    for start in range(first // BLOCK_N * BLOCK_N, context_len, BLOCK_N):  # tiles before the window: never read
        positions = start + tl.arange(0, BLOCK_N)
        valid = (positions < context_len) & (positions >= first)
        running_max, running_sum, acc = _attend_block(
            q, running_max, running_sum, acc, k_cache_ptr, v_cache_ptr, block_tables_ptr + seq * stride_tables,
            kv_head, positions, valid, valid[None, :], scale, KV_HEADS, HEAD_DIM, BLOCK_SIZE, IEEE, dims, dim_mask,
        )
    out = acc / tl.maximum(running_sum, 1e-30)[:, None]  # padded rows have no keys
    out_offsets = seq * stride_out + (kv_head * GROUP + rows)[:, None] * HEAD_DIM + dims[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float, out: torch.Tensor, sliding_window: int | None = None,
                 block_n: int = 32) -> None:
    """q/out [seqs, heads, head_dim], one query token per sequence; with ``sliding_window``
    each sees only the last that many keys."""
    seqs, heads, head_dim = q.shape
    kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = heads // kv_heads
    _paged_decode_kernel[(seqs, kv_heads)](
        q, k_cache, v_cache, block_tables, context_lens, out,
        scale, _window(sliding_window), q.stride(0), out.stride(0), block_tables.stride(0),
        KV_HEADS=kv_heads, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=block_size, BLOCK_N=block_n, IEEE=q.dtype == torch.float32,
    )


@triton.jit
def _paged_prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, query_start_ptr, out_ptr,
    scale, window, first_seq, stride_q, stride_out, stride_tables,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    """One program per (sequence, query head, BLOCK_M query tokens). The chunk's
    own K/V are already in the cache, so cached prefix and new tokens are read
    alike; query i sits at position context_len - query_len + i (causal)."""
    seq = first_seq + tl.program_id(0)
    head = tl.program_id(1)
    query_start = tl.load(query_start_ptr + seq)
    query_len = tl.load(query_start_ptr + seq + 1) - query_start
    first_row = tl.program_id(2) * BLOCK_M
    if first_row < query_len:
        context_len = tl.load(context_lens_ptr + seq)
        kv_head = head // GROUP
        rows = first_row + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM_PAD)
        row_mask = rows < query_len
        dim_mask = dims < HEAD_DIM
        q_offsets = (query_start + rows)[:, None] * stride_q + head * HEAD_DIM + dims[None, :]
        q = tl.load(q_ptr + q_offsets, mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
        query_positions = context_len - query_len + rows

        running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        running_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
        end = tl.minimum(context_len, context_len - query_len + first_row + BLOCK_M)
        first = tl.maximum(context_len - query_len + first_row - window + 1, 0)  # the first row's first key
        for start in range(first // BLOCK_N * BLOCK_N, end, BLOCK_N):
            positions = start + tl.arange(0, BLOCK_N)
            valid = (positions < end) & (positions >= first)
            visible = (valid[None, :] & (positions[None, :] <= query_positions[:, None])
                       & (positions[None, :] > query_positions[:, None] - window))
            running_max, running_sum, acc = _attend_block(
                q, running_max, running_sum, acc, k_cache_ptr, v_cache_ptr, block_tables_ptr + seq * stride_tables,
                kv_head, positions, valid, visible, scale, KV_HEADS, HEAD_DIM, BLOCK_SIZE, IEEE, dims, dim_mask,
            )
        out = acc / tl.maximum(running_sum, 1e-30)[:, None]
        out_offsets = (query_start + rows)[:, None] * stride_out + head * HEAD_DIM + dims[None, :]
        tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                  context_lens: torch.Tensor, query_start_loc: torch.Tensor, first_seq: int, num_seqs: int,
                  max_query_len: int, scale: float, out: torch.Tensor, sliding_window: int | None = None,
                  block_m: int = 16, block_n: int = 32) -> None:
    """Attention for sequences ``first_seq .. first_seq + num_seqs`` of a flat batch
    (q/out [tokens, heads, head_dim]), each attending to its cached context (its last
    ``sliding_window`` keys when set)."""
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    grid = (num_seqs, heads, triton.cdiv(max_query_len, block_m))
    _paged_prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, context_lens, query_start_loc, out,
        scale, _window(sliding_window), first_seq, q.stride(0), out.stride(0), block_tables.stride(0),
        KV_HEADS=kv_heads, GROUP=heads // kv_heads,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)), BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=block_n, IEEE=q.dtype == torch.float32,
    )
