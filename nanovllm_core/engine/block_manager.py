"""Paged KV cache bookkeeping: blocks, reference counts and hash-based prefix caching.

A block holds ``block_size`` consecutive tokens of one or more sequences. Each
sequence keeps the keys of its full blocks: each a SHA-256 digest of the key of the
block before and the block's tokens, so equal keys mean equal prefixes, and no
prompt can be crafted to collide with another user's prefix (Python's ``hash``
of a tuple can be: vLLM's CVE-2025-25183).
Once a block is full its hash is registered, unless another block already holds
that prefix; a later sequence whose prompt starts with the same tokens takes the
registered block instead of computing it again. Freed blocks keep their hash and
are reused least-recently-freed first, so the cache remembers as much as memory
allows.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from nanovllm_core.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None
        self.token_ids: tuple[int, ...] = ()


def chain_hash(previous_hash: bytes | None, token_ids: tuple[int, ...] | list[int]) -> bytes:
    """The key of a block holding ``token_ids`` after the prefix whose last key is ``previous_hash``."""
    return hashlib.sha256((previous_hash or b"") + array("q", token_ids).tobytes()).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block_id: dict[bytes, int] = {}
        self.prefix_cache_queries = 0  # prompt tokens looked up in the cache
        self.prefix_cache_hits = 0  # of those, found there

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # prefix caching

    def find_cached_blocks(self, seq: Sequence) -> list[int]:
        """Ids of the blocks already holding the longest cached prefix of ``seq``.

        The last token is never served from the cache: the model must run on at
        least one token to produce the next one.
        """
        if not self.enable_prefix_caching:
            return []
        found: list[int] = []
        for index in range((len(seq) - 1) // self.block_size):
            block_id = self.hash_to_block_id.get(self.block_hash(seq, index))
            if block_id is None or self.blocks[block_id].token_ids != self._block_tokens(seq, index):
                break
            found.append(block_id)
        return found

    def block_hash(self, seq: Sequence, index: int) -> bytes:
        """The chained hash of ``seq``'s full block ``index``, from its tokens alone."""
        hashes = seq.block_hashes
        while len(hashes) <= index:
            hashes.append(chain_hash(hashes[-1] if hashes else None, self._block_tokens(seq, len(hashes))))
        return hashes[index]

    def _block_tokens(self, seq: Sequence, index: int) -> tuple[int, ...]:
        start = index * self.block_size
        return tuple(seq.token_ids[start : start + self.block_size])

    def can_admit(self, seq: Sequence, cached_block_ids: list[int], num_new_tokens: int) -> bool:
        # cached blocks that sit in the free list stop being free once taken
        reclaimed = sum(1 for b in cached_block_ids if self.blocks[b].ref_count == 0)
        total = len(cached_block_ids) * self.block_size + num_new_tokens
        return self.blocks_needed(total) - len(cached_block_ids) + reclaimed <= self.num_free_blocks

    def admit(self, seq: Sequence, cached_block_ids: list[int]) -> None:
        """Give a waiting sequence its cached prefix blocks."""
        for block_id in cached_block_ids:
            self._take(block_id)
        seq.block_table = list(cached_block_ids)
        seq.num_computed_tokens = len(cached_block_ids) * self.block_size
        if seq.num_preemptions == 0:  # a resumed sequence's own output is no prompt-cache hit
            seq.num_cached_tokens = seq.num_computed_tokens
            if self.enable_prefix_caching:
                self.prefix_cache_queries += seq.num_prompt_tokens
                self.prefix_cache_hits += seq.num_cached_tokens

    # allocation

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return needed <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Make room for the next ``num_new_tokens`` of ``seq`` and register the
        blocks they fill. The K/V land in the cache during this step's forward
        pass, before any attention reads them, so the hashes can be published now.
        """
        end = seq.num_computed_tokens + num_new_tokens
        while len(seq.block_table) < self.blocks_needed(end):
            seq.block_table.append(self._allocate())
        if not self.enable_prefix_caching:
            return
        first_full = seq.num_computed_tokens // self.block_size
        for index in range(first_full, end // self.block_size):
            self._publish(seq, index)

    def free(self, seq: Sequence) -> None:
        # newest blocks first, so the oldest (most shared) prefixes stay longest
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0

    def _publish(self, seq: Sequence, index: int) -> None:
        block = self.blocks[seq.block_table[index]]
        block_hash = self.block_hash(seq, index)  # computed even for a duplicate: the chain goes on
        if block.hash is not None or block_hash in self.hash_to_block_id:
            return  # this block, or another holding the same prefix, is registered already
        block.hash, block.token_ids = block_hash, self._block_tokens(seq, index)
        self.hash_to_block_id[block_hash] = block.block_id

    def _allocate(self) -> int:
        if not self.free_block_ids:
            raise RuntimeError("KV cache is full; the scheduler should have preempted")
        block_id, _ = self.free_block_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict its cached content
            if self.hash_to_block_id.get(block.hash) == block_id:
                del self.hash_to_block_id[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_block_ids[block_id]
        block.ref_count += 1
