"""Which replica a request goes to: the one holding at least half its prompt cached, unless
that one is overloaded (its batch is full, or it carries more than twice the sequences of the
least loaded, plus one); otherwise the least loaded, ties taken in turn. Pure functions and
the affinity table, testable without processes."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from nanovllm_core.engine.block_manager import chain_hash

PREFIX_ENTRIES = 1 << 16  # prompt-prefix hashes remembered for affinity, across replicas


@dataclass(frozen=True)
class Route:
    replica: int
    by_affinity: bool  # chosen for its cached prefix over a less loaded replica


def choose_replica(loads: dict[int, int], owner: int | None, max_num_seqs: int, start: int,
                   num_replicas: int) -> Route:
    """``loads``: the replicas with room, by index, and the sequences each carries; ``owner``:
    the replica caching the prompt's prefix, if any; ``start``: where the search for the least
    loaded begins, so that ties rotate."""
    least = min(loads, key=lambda index: (loads[index], (index - start) % num_replicas))
    if owner is not None and owner != least and owner in loads and not overloaded(
            loads[owner], loads[least], max_num_seqs):
        return Route(owner, by_affinity=True)
    return Route(least, by_affinity=False)


def overloaded(load: int, least_load: int, max_num_seqs: int) -> bool:
    return load >= max_num_seqs or load > 2 * least_load + 1


class PrefixAffinity:
    """Which replica last ran each prompt prefix, in KV-block units (least recently used
    forgotten first): a prompt that shares a cached prefix goes where that prefix is cached."""

    def __init__(self, block_size: int, capacity: int = PREFIX_ENTRIES):
        self.block_size = block_size
        self.capacity = capacity
        self._owner: OrderedDict[bytes, int] = OrderedDict()

    def prefix_hashes(self, prompt_ids: list[int]) -> list[bytes]:
        """The keys the replicas' prefix caches give the prompt's full blocks."""
        hashes, previous = [], None
        for start in range(0, len(prompt_ids) - self.block_size + 1, self.block_size):
            previous = chain_hash(previous, prompt_ids[start:start + self.block_size])
            hashes.append(previous)
        return hashes

    def owner(self, hashes: list[bytes]) -> int | None:
        """The replica holding a cached prefix of at least half these blocks, if any (a
        shorter one, such as a chat template's system prompt, is not worth a longer queue)."""
        for length in range(len(hashes), (len(hashes) - 1) // 2, -1):
            if length and hashes[length - 1] in self._owner:
                return self._owner[hashes[length - 1]]
        return None

    def record(self, hashes: list[bytes], replica: int) -> None:
        for prefix in hashes:
            self._owner[prefix] = replica
            self._owner.move_to_end(prefix)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)
