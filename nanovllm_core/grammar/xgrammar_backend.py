"""The built-in grammar backend, on xgrammar.

Chosen over llguidance by measurement on the CPU with SmolLM2's tokenizer
(benchmarks/grammar_mask_cost.py): a next-token mask took 2 us at the median
against 13 us, because xgrammar precomputes the tokens that do not depend on
the parser's stack.
"""

from __future__ import annotations

import json

import torch
import xgrammar as xgr

from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar.backend import GrammarBackend, GrammarMatcher, GuidedDecoding

# compiled grammars xgrammar keeps for repeated constraints; one complex schema can take ~30 MB
COMPILE_CACHE_BYTES = 128 << 20


class XGrammarMatcher(GrammarMatcher):
    def __init__(self, backend: XGrammarBackend, compiled: xgr.CompiledGrammar):
        self.backend = backend
        self._matcher = xgr.GrammarMatcher(compiled)

    def fill_mask(self, mask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(mask, row)

    def accept(self, token_id: int) -> bool:
        return self._matcher.accept_token(token_id)

    def is_terminated(self) -> bool:
        return self._matcher.is_terminated()


class XGrammarBackend(GrammarBackend):
    def __init__(self, tokenizer, vocab_size: int):
        self.vocab_size = vocab_size
        self._tokenizer_info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(self._tokenizer_info, cache_limit_bytes=COMPILE_CACHE_BYTES)

    def compile(self, guided: GuidedDecoding) -> xgr.CompiledGrammar:
        try:
            # compact JSON: free whitespace lets a small model wander into endless newlines
            if guided.kind == "json_object":
                return self._compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if guided.kind == "json_schema":
                return self._compiler.compile_json_schema(guided.spec, any_whitespace=False, strict_mode=True)
            if guided.kind == "structural_tag":
                return self._compiler.compile_structural_tag(guided.spec)
            if guided.kind == "regex":
                return self._compiler.compile_regex(guided.spec)
            return self._compiler.compile_grammar(guided.spec)
        except (RuntimeError, ValueError, json.JSONDecodeError) as error:
            raise InvalidRequestError(f"invalid {guided.kind.replace('_', ' ')}: {error}", param=guided.param) from error

    def serialize(self, compiled: xgr.CompiledGrammar) -> str:
        return compiled.serialize_json()

    def deserialize(self, data: str) -> xgr.CompiledGrammar:
        return xgr.CompiledGrammar.deserialize_json(data, self._tokenizer_info)

    def matcher(self, compiled: xgr.CompiledGrammar) -> XGrammarMatcher:
        return XGrammarMatcher(self, compiled)

    def allocate_mask(self, rows: int) -> torch.Tensor:
        return xgr.allocate_token_bitmask(rows, self.vocab_size)

    def apply_mask(self, logits: torch.Tensor, mask: torch.Tensor, rows: list[int]) -> None:
        xgr.apply_token_bitmask_inplace(logits, mask, indices=rows)
