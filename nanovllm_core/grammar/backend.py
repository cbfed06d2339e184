"""What a grammar backend plugin implements, and how the runner applies it.

A request's ``GuidedDecoding`` is compiled once per distinct constraint by the
engine's backend; each sequence gets its own matcher. Before every sampling
step the runner masks the logits of constrained rows to the tokens their
matcher allows, so the constraint composes with any sampler and sampling
parameter, and constrained and free sequences share one batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class GuidedDecoding:
    """``spec`` is the JSON schema as JSON text (json_schema), an EBNF grammar
    (ebnf), a regular expression (regex) or a structural tag as JSON text
    (structural_tag: xgrammar's format, which tool calling uses); json_object
    needs none."""

    kind: Literal["json_schema", "json_object", "ebnf", "regex", "structural_tag"]
    spec: str = ""


class GrammarMatcher(ABC):
    """One sequence's position in its grammar."""

    backend: GrammarBackend

    @abstractmethod
    def fill_mask(self, mask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into row ``row`` of the backend's mask."""

    @abstractmethod
    def accept(self, token_id: int) -> bool:
        """Advance past ``token_id``; False if the grammar does not allow it."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """The grammar is complete and its end accepted: the sequence is done."""


class GrammarBackend(ABC):
    """Built as ``cls(tokenizer, vocab_size)`` for the engine's tokenizer."""

    @abstractmethod
    def compile(self, guided: GuidedDecoding) -> object:
        """A compiled grammar; raise ``InvalidRequestError`` for a bad spec. Called from
        worker threads, concurrently; a backend caches repeated constraints itself, within
        a bounded number of bytes."""

    @abstractmethod
    def matcher(self, compiled: object) -> GrammarMatcher: ...

    @abstractmethod
    def allocate_mask(self, rows: int) -> torch.Tensor: ...

    @abstractmethod
    def apply_mask(self, logits: torch.Tensor, mask: torch.Tensor, rows: list[int]) -> None:
        """Set the logits of disallowed tokens to -inf, in place, for ``rows``."""


def apply_grammar_masks(logits: torch.Tensor, matchers: list[tuple[int, GrammarMatcher]]) -> None:
    """Mask ``logits`` rows to what each (row, matcher) allows; an engine has one backend."""
    backend = matchers[0][1].backend
    mask = backend.allocate_mask(logits.shape[0])
    for row, matcher in matchers:
        matcher.fill_mask(mask, row)
    backend.apply_mask(logits, mask.to(logits.device, non_blocking=True), [row for row, _ in matchers])
