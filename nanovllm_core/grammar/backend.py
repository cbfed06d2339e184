"""What a grammar backend plugin implements, and how the runner applies it.

A request's ``GuidedDecoding`` is compiled once per distinct constraint by the
engine's backend; each sequence gets its own matcher. Before every sampling
step the runner masks the logits of constrained rows to the tokens their
matcher allows, so the constraint composes with any sampler and sampling
parameter, and constrained and free sequences share one batch.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import torch

from nanovllm_core.errors import InvalidRequestError


@dataclass(frozen=True)
class GuidedDecoding:
    """``spec`` is the JSON schema as JSON text (json_schema), an EBNF grammar
    (ebnf), a regular expression (regex) or a structural tag as JSON text
    (structural_tag: xgrammar's format, which tool calling uses); json_object
    needs none. ``param``: the request field it came from, which its errors name."""

    kind: Literal["json_schema", "json_object", "ebnf", "regex", "structural_tag"]
    spec: str = ""
    param: str = field(default="response_format", compare=False)

    @classmethod
    def from_json(cls, kind: str, spec: object, param: str) -> GuidedDecoding:
        """A constraint whose spec is JSON (a schema, a structural tag). Its schemas are checked
        where it compiles (``schema_check``, off the event loop and killable), not here."""
        try:
            return cls(kind, json.dumps(spec), param=param)
        except RecursionError as error:
            raise InvalidRequestError(f"{param}: the schema nests too deeply", param=param) from error


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
        """A compiled grammar; raise ``InvalidRequestError`` for a bad spec. A server calls it
        in worker processes (``compile_pool``), which it kills past the request's timeout;
        an offline engine, on its own thread."""

    @abstractmethod
    def serialize(self, compiled: object) -> str | bytes:
        """A compiled grammar as the worker sends it back to the server."""

    @abstractmethod
    def deserialize(self, data: str | bytes) -> object:
        """What ``serialize`` made, as a compiled grammar of this backend's instance."""

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
