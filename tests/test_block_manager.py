"""The block manager's prefix cache: sharing, eviction, and that a cached block
always holds the K/V its hash claims, under random workloads with preemption."""

import random

import pytest

from nanovllm_core.engine.block_manager import BlockManager, chain_hash
from nanovllm_core.engine.scheduler import Scheduler
from nanovllm_core.engine.sequence import Sequence
from nanovllm_core.sampling_params import SamplingParams


def seq_of(tokens, request_id="r"):
    return Sequence(request_id, tokens, SamplingParams(), seed=0)


def run_prompt(manager, seq):
    manager.admit(seq, manager.find_cached_blocks(seq))
    manager.append_slots(seq, len(seq) - seq.num_computed_tokens)
    seq.num_computed_tokens = len(seq)


def decode(manager, seq, tokens):
    for token in tokens:
        seq.append_token(token)
        manager.append_slots(seq, 1)
        seq.num_computed_tokens += 1


def test_prefix_blocks_are_shared_and_reference_counted():
    manager = BlockManager(num_blocks=8, block_size=4)
    first = seq_of(list(range(10)), "a")
    manager.admit(first, manager.find_cached_blocks(first))
    manager.append_slots(first, 10)
    assert len(first.block_table) == 3 and manager.num_free_blocks == 5

    second = seq_of(list(range(8)) + [99, 98], "b")
    cached = manager.find_cached_blocks(second)
    assert cached == first.block_table[:2]
    manager.admit(second, cached)
    assert second.num_computed_tokens == 8
    assert manager.blocks[cached[0]].ref_count == 2

    manager.free(first)
    manager.free(second)
    assert manager.num_free_blocks == 8
    # freed blocks keep their content until reused
    third = seq_of(list(range(9)), "c")
    assert manager.find_cached_blocks(third) == cached


def test_fully_cached_prompt_still_computes_its_last_token():
    manager = BlockManager(num_blocks=8, block_size=4)
    first = seq_of(list(range(8)))
    manager.admit(first, [])
    manager.append_slots(first, 8)
    again = seq_of(list(range(8)), "again")
    assert len(manager.find_cached_blocks(again)) == 1  # not 2: the last token must run


def test_eviction_reuses_oldest_free_block_and_forgets_its_hash():
    manager = BlockManager(num_blocks=2, block_size=2)
    first = seq_of([1, 2, 3])
    manager.admit(first, [])
    manager.append_slots(first, 3)
    manager.free(first)
    other = seq_of([7, 8, 9, 10, 11], "other")
    manager.admit(other, [])
    manager.append_slots(other, 4)
    assert manager.find_cached_blocks(seq_of([1, 2, 3], "x")) == []



def test_a_duplicate_block_does_not_break_the_hash_chain():
    """Regression: a full block whose prefix another block already held got no hash,
    so the sequence's next block was registered as if it began a prompt."""
    manager = BlockManager(num_blocks=8, block_size=4)
    run_prompt(manager, seq_of([1, 2, 3, 4], "a"))
    twin = seq_of([1, 2, 3, 4], "b")  # the same prompt again: n>1, or a retry
    run_prompt(manager, twin)
    decode(manager, twin, [5, 6, 7, 8])
    # [5, 6, 7, 8] at positions 4-7 follow [1, 2, 3, 4]; as a prompt of its own it has other K/V
    assert manager.find_cached_blocks(seq_of([5, 6, 7, 8, 9], "c")) == []
    follow_up = seq_of([1, 2, 3, 4, 5, 6, 7, 8, 9], "d")
    assert len(manager.find_cached_blocks(follow_up)) == 2  # the real continuation is still found


def test_evicting_a_duplicate_keeps_the_original_mapping():
    manager = BlockManager(num_blocks=4, block_size=2)
    first = seq_of([1, 2, 3], "a")
    run_prompt(manager, first)
    twin = seq_of([1, 2, 3], "b")
    run_prompt(manager, twin)
    manager.free(twin)  # the twin's unregistered block is reused first
    run_prompt(manager, seq_of([9, 9, 9], "c"))
    assert manager.find_cached_blocks(seq_of([1, 2, 3], "d")) == first.block_table[:1]


class KVWorld:
    """The real scheduler and block manager over a pretend model that records, for
    every slot it writes, the whole token prefix whose K/V it stores there."""

    def __init__(self, rng: random.Random, num_blocks: int, block_size: int):
        self.rng = rng
        self.manager = BlockManager(num_blocks, block_size)
        self.scheduler = Scheduler(self.manager, max_num_seqs=6, max_num_batched_tokens=24)
        self.kv: dict[tuple[int, int], tuple[int, ...]] = {}  # (block, offset) -> prefix ending at that token
        self.claims: dict[int, tuple[int, ...]] = {}  # hash -> the prefix it stands for
        self.live: list[Sequence] = []

    def add(self, prompt: list[int], max_tokens: int, name: str) -> None:
        seq = Sequence(name, prompt, SamplingParams(max_tokens=max_tokens), seed=0)
        self.scheduler.add(seq)
        self.live.append(seq)

    def step(self) -> None:
        size = self.manager.block_size
        batch = self.scheduler.schedule()
        # a forward pass writes the K/V of every new token, then attention reads each sequence's context
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            for position in range(seq.num_computed_tokens, seq.num_computed_tokens + num_new):
                self.kv[(seq.block_table[position // size], position % size)] = tuple(seq.token_ids[: position + 1])
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            for position in range(seq.num_computed_tokens + num_new):
                slot = (seq.block_table[position // size], position % size)
                assert self.kv[slot] == tuple(seq.token_ids[: position + 1]), (seq.request_id, position)
        samples = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):  # the blocks this step completes
            computed = seq.num_computed_tokens + num_new
            block_hash = None
            for end in range(size, computed + 1, size):
                block_hash = chain_hash(block_hash, tuple(seq.token_ids[end - size : end]))
                self.claims.setdefault(block_hash, tuple(seq.token_ids[:end]))
            samples.append(True if computed == len(seq) else None)

        def sample(seq: Sequence, _token) -> None:
            if seq.num_output_tokens >= seq.params.max_tokens or self.rng.random() < 0.03:
                seq.finish("stop")
            else:
                seq.append_token(self.rng.randrange(4))  # a tiny vocabulary makes repeats likely

        for seq, sampled in zip(batch.seqs, samples):  # the output processor's part of a step
            if sampled:
                sample(seq, None)
        self.scheduler.postprocess(batch)
        self.live = [s for s in self.live if not s.is_finished]
        if self.live and self.rng.random() < 0.05:
            victim = self.rng.choice(self.live)
            self.scheduler.abort(victim.request_id)
            self.live.remove(victim)

    def check_cache(self) -> None:
        size = self.manager.block_size
        for block_hash, block_id in self.manager.hash_to_block_id.items():
            block = self.manager.blocks[block_id]
            assert block.hash == block_hash
            prefix = self.claims.get(block_hash)
            assert prefix is not None, "a block is registered under a hash no computed prefix has"
            assert block.token_ids == prefix[-size:]
            for offset in range(size):  # the K/V there were computed at the right positions, after the right tokens
                assert self.kv[(block_id, offset)] == prefix[: len(prefix) - size + offset + 1]


@pytest.mark.parametrize("seed", range(12))
def test_every_cached_block_holds_what_its_hash_claims(seed):
    rng = random.Random(seed)
    world = KVWorld(rng, num_blocks=rng.choice([10, 14]), block_size=rng.choice([2, 4]))
    stems = [[rng.randrange(4) for _ in range(rng.randint(1, 12))] for _ in range(4)]
    requests = 0
    for _ in range(400):
        if rng.random() < 0.3 and requests < 60:
            prompt = rng.choice(stems)[:] if rng.random() < 0.3 else rng.choice(stems) + [rng.randrange(4)
                                                                                        for _ in range(rng.randint(0, 9))]
            world.add(prompt, rng.randint(1, 18), f"r{requests}")
            requests += 1
        world.step()
        world.check_cache()
    assert world.manager.hash_to_block_id and world.scheduler.num_preemptions > 0


def test_a_resumed_sequence_does_not_count_its_own_output_as_cached_prompt():
    """Regression: after a preemption, the recomputed output blocks were reported as
    cached prompt tokens (cached_tokens > prompt_tokens) and inflated the hit rate."""
    manager = BlockManager(num_blocks=8, block_size=4)
    seq = seq_of([1, 2, 3, 4, 5])
    run_prompt(manager, seq)
    decode(manager, seq, [6, 7, 8, 9])
    manager.free(seq)  # preempted
    seq.num_preemptions += 1
    cached = manager.find_cached_blocks(seq)
    assert len(cached) == 2  # the resumed sequence does get its blocks back
    manager.admit(seq, cached)
    assert seq.num_cached_tokens == 0 <= seq.num_prompt_tokens
    assert (manager.prefix_cache_hits, manager.prefix_cache_queries) == (0, 5)


def test_block_keys_are_sha256_of_the_parent_key_and_the_tokens():
    """Keys were Python's hash((parent, tokens)), where parents equal modulo 2**61 - 1 collide
    (hash(5) == hash(5 + 2**61 - 1)): a crafted prompt could be served another user's K/V."""
    import hashlib
    import struct

    tokens = tuple(range(100, 116))
    first = chain_hash(None, tokens)
    assert first == hashlib.sha256(struct.pack("<16q", *tokens)).digest()
    assert chain_hash(first, tokens) == hashlib.sha256(first + struct.pack("<16q", *tokens)).digest()
    assert chain_hash(first, tokens) != chain_hash(chain_hash(None, tokens[::-1]), tokens)
