"""A scheduled batch as the step's tensors: tokens, positions, slots, attention metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

import torch

from nanovllm_core.attention import AttentionMetadata
from nanovllm_core.engine.scheduler import ScheduledBatch
from nanovllm_core.engine.tensor_parallel import StepInputs


@dataclass
class PreparedStep:
    """The step's tensors; for each sequence whether it samples a token this step (its last
    token is computed) or is a prompt still being prefilled in chunks; the embedding requests,
    whole in this step, as (row, first token, end) in the flat batch; and the prompt tokens to
    score (prompt_logprobs) as (row, their ids)."""

    inputs: StepInputs
    samples: list[bool]
    pooled: list[tuple[int, int, int]]
    scored: list[tuple[int, list[int]]]


@dataclass
class _Rows:
    """The flat batch, gathered on the host."""

    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    token_rows: list[int] = field(default_factory=list)
    context_lens: list[int] = field(default_factory=list)
    sample_indices: list[int] = field(default_factory=list)
    samples: list[bool] = field(default_factory=list)
    pooled: list[tuple[int, int, int]] = field(default_factory=list)
    prompt_indices: list[int] = field(default_factory=list)
    scored: list[tuple[int, list[int]]] = field(default_factory=list)


def prepare_step(batch: ScheduledBatch, block_size: int, device: torch.device) -> PreparedStep:
    rows = _gather(batch)
    width = max(len(seq.block_table) for seq in batch.seqs)
    block_tables = torch.tensor(
        [seq.block_table + [0] * (width - len(seq.block_table)) for seq in batch.seqs], dtype=torch.int64)
    positions = torch.tensor(rows.positions, dtype=torch.int64)
    slots = block_tables[torch.tensor(rows.token_rows), positions // block_size] * block_size + positions % block_size
    query_lens = batch.num_new_tokens
    metadata = AttentionMetadata(
        num_decode_tokens=batch.num_decodes,
        slot_mapping=slots.to(device, non_blocking=True),
        block_tables=block_tables.to(device, dtype=torch.int32, non_blocking=True),
        context_lens=torch.tensor(rows.context_lens, dtype=torch.int32).to(device, non_blocking=True),
        query_start_loc=torch.tensor([0, *accumulate(query_lens)], dtype=torch.int32).to(device),
        max_query_len=max(query_lens),
        max_context_len=max(rows.context_lens),
        query_lens_host=list(query_lens),
        context_lens_host=rows.context_lens,
    )
    inputs = StepInputs(
        input_ids=torch.tensor(rows.input_ids, dtype=torch.int64).to(device, non_blocking=True),
        positions=positions.to(device, non_blocking=True),
        metadata=metadata,
        sample_indices=torch.tensor(rows.sample_indices, dtype=torch.int64).to(device, non_blocking=True),
        prompt_indices=torch.tensor(rows.prompt_indices, dtype=torch.int64).to(device, non_blocking=True),
    )
    return PreparedStep(inputs, rows.samples, rows.pooled, rows.scored)


def _gather(batch: ScheduledBatch) -> _Rows:
    rows = _Rows()
    for row, (seq, num_new) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
        start = seq.num_computed_tokens
        end = start + num_new
        rows.input_ids.extend(seq.token_ids[start:end])
        rows.positions.extend(range(start, end))
        rows.token_rows.extend([row] * num_new)
        rows.context_lens.append(end)
        rows.samples.append(end == len(seq) and not seq.is_pooling)
        flat_end = len(rows.input_ids)
        if rows.samples[-1]:
            rows.sample_indices.append(flat_end - 1)
        elif seq.is_pooling:  # the scheduler never splits an embedding request
            rows.pooled.append((row, flat_end - num_new, flat_end))
        if seq.scores_prompt:  # position p's logits score prompt token p + 1, once (not again after preemption)
            scored = range(max(start, len(seq.prompt_logprobs) - 1), min(end, seq.num_prompt_tokens - 1))
            rows.prompt_indices.extend(flat_end - end + p for p in scored)
            rows.scored.append((row, [seq.token_ids[p + 1] for p in scored]))
    return rows
