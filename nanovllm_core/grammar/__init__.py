"""Structured outputs: decoding constrained by a grammar."""

from nanovllm_core.grammar.backend import GrammarBackend, GrammarMatcher, GuidedDecoding, apply_grammar_masks

__all__ = ["GrammarBackend", "GrammarMatcher", "GuidedDecoding", "apply_grammar_masks"]
