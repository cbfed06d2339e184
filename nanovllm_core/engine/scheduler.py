"""Continuous batching: which sequences run this step, and on how many tokens.

Every step has a token budget (``max_num_batched_tokens``). Running sequences
go first, in arrival order: a decode costs one token, an unfinished prompt the
rest of its chunk. Waiting sequences are then admitted while budget, sequence
slots and KV blocks last; a prompt longer than what is left is prefilled in
chunks over several steps, so it never stalls the decodes around it (an
embedding request is never split: it waits for a step with room for all of it). When a
running sequence needs a block and none is free, the newest running sequence
is preempted: its blocks are freed and it is recomputed later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nanovllm_core.engine.block_manager import BlockManager
from nanovllm_core.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """Sequences of one step, single-token ones (decodes) first."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def num_decodes(self) -> int:
        return sum(1 for n in self.num_new_tokens if n == 1)

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)

    def ordered(self) -> ScheduledBatch:
        order = sorted(range(len(self.seqs)), key=lambda i: self.num_new_tokens[i] != 1)
        return ScheduledBatch([self.seqs[i] for i in order], [self.num_new_tokens[i] for i in order])


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        preempted = self._schedule_running(batch, budget)
        budget -= batch.num_tokens
        if not preempted:
            self._admit_waiting(batch, budget)
        return batch.ordered()

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> bool:
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_uncomputed_tokens, budget)
            while not self.block_manager.can_append(seq, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                self.block_manager.append_slots(seq, num_new)
                batch.add(seq, num_new)
                budget -= num_new
                index += 1
        return preempted

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            cached = [] if seq.scores_prompt else self.block_manager.find_cached_blocks(seq)
            num_new = min(len(seq) - len(cached) * self.block_manager.block_size, budget)
            if seq.is_pooling and num_new < len(seq) or not self.block_manager.can_admit(seq, cached, num_new):
                break
            self.waiting.popleft()
            self.block_manager.admit(seq, cached)
            self.block_manager.append_slots(seq, num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.add(seq, num_new)
            budget -= num_new

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def postprocess(self, batch: ScheduledBatch) -> None:
        """After a step and its outputs: account for the tokens the model computed, free what finished."""
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new
        self._free_finished()

    def _free_finished(self) -> None:
        still_running = []
        for seq in self.running:
            if seq.is_finished:
                self.block_manager.free(seq)
            else:
                still_running.append(seq)
        self.running = still_running

    def abort(self, request_id: str) -> Sequence | None:
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    if seq.status is SequenceStatus.RUNNING:
                        self.block_manager.free(seq)
                    seq.finish("abort")
                    return seq
        return None
