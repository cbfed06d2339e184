"""Constrained decoding, owned in one place: the engine's grammar backend and compiles, the
matcher a sequence carries, the masks the runner applies, the step the output processor takes.

A server compiles on its client's side, in worker processes (``grammar.compile_pool``) that
this manager's backend seeds; an offline engine compiles here, on its own thread.
"""

from __future__ import annotations

import threading

import torch

from nanovllm_core import plugins
from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.model_spec import ModelSpec
from nanovllm_core.engine.sampling_inputs import ending_token_ids
from nanovllm_core.engine.sequence import Sequence
from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar import GrammarBackend, GuidedDecoding, apply_grammar_masks
from nanovllm_core.grammar.schema_check import check_constraint


class StructuredOutputManager:
    def __init__(self, spec: ModelSpec, config: EngineConfig):
        self.spec = spec
        self.backend_name = config.grammar_backend
        self._backend: GrammarBackend | None = None  # built on the first constrained request
        self._lock = threading.Lock()

    def backend(self) -> GrammarBackend:
        """The grammar backend, built on first use (from any thread)."""
        with self._lock:
            if self._backend is None:
                if self.spec.tokenizer is None:
                    raise InvalidRequestError("structured outputs need the tokenizer (skip_tokenizer_init is set)")
                backend_cls = plugins.grammar_backends().get(self.backend_name)
                self._backend = backend_cls(self.spec.tokenizer, self.spec.vocab_size)
            return self._backend

    def compile(self, guided: GuidedDecoding) -> object:
        """Compile a constraint (the backend caches repeats); InvalidRequestError if it is bad.
        Slow for some grammars: a server compiles in worker processes instead (compile_pool)."""
        check_constraint(guided)
        return self.backend().compile(guided)

    def attach(self, seq: Sequence, compiled: object | None) -> None:
        """Give a sequence with a constraint its matcher (``compiled``: None to compile here)."""
        guided = seq.params.guided
        seq.grammar = self.backend().matcher(compiled if compiled is not None else self.compile(guided))
        seq.grammar_waits = bool(seq.params.guided_starts_after)


def mask_logits(logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: frozenset[int]) -> set[int]:
    """Mask the rows of constrained sequences to what their grammars allow; return the rows,
    still short of min_tokens, whose grammar allows nothing but ending: banning the end there
    would leave no token at all."""
    rows = [row for row, seq in enumerate(seqs) if seq.constrained]
    if not rows:
        return set()
    apply_grammar_masks(logits, [(row, seqs[row].grammar) for row in rows])
    only_end = set()
    for row in rows:
        seq = seqs[row]
        if seq.num_output_tokens >= seq.params.min_tokens:
            continue
        end_ids = [t for t in ending_token_ids(seq.params, eos_token_ids) if 0 <= t < logits.shape[1]]
        allowed = torch.isfinite(logits[row])
        if int(allowed.sum()) == int(allowed[end_ids].sum()):
            only_end.add(row)
    return only_end


def advance(seq: Sequence, token_id: int) -> None:
    """After a sampled token: step the grammar, or, while the output is still thinking, see
    whether it has just ended its thinking (the constraint starts there)."""
    if seq.constrained:
        seq.grammar.accept(token_id)  # the mask allowed only tokens it accepts
    elif seq.grammar is not None:
        end = seq.params.guided_starts_after
        seq.grammar_waits = tuple(seq.token_ids[-len(end):]) != end


def terminated(seq: Sequence) -> bool:
    """Whether the constraint is complete, so the sequence ends here."""
    return seq.constrained and seq.grammar.is_terminated()
