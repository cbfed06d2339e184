"""Turning output tokens into text as they arrive.

Byte-level BPE tokens can end in the middle of a UTF-8 character; the text of
such tokens is held back until the character is complete. Stop strings are
matched on the text, and any tail that could still become a stop string is
held back too, so no part of a stop string is ever emitted.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

# decoding a few tokens before the new ones keeps spacing right for tokenizers
# whose pieces render differently at the start of a string
CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_token_ids: list[int], skip_special_tokens: bool):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids = list(prompt_token_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_ids: list[int]) -> str:
        """The text that ``token_ids`` complete (possibly empty)."""
        self.token_ids.extend(token_ids)
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """Whatever is held back, at the end of the sequence."""
        prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.token_ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.token_ids)
        return full_text[len(prefix_text) :]


class StopStringMatcher:
    """Finds stop strings in text that arrives in pieces, in time linear in the text:
    each stop string has an automaton (Knuth-Morris-Pratt) that remembers how much of
    it the text ends with, so no text is searched twice. What may begin a stop string
    is held back until it is known not to."""

    def __init__(self, stop: list[str], include_stop_str_in_output: bool):
        self.automata = [_StopAutomaton(s) for s in stop]
        self.include = include_stop_str_in_output
        self.pending = ""  # received, not emitted: it may begin a stop string

    def add(self, delta: str) -> tuple[str, str | None]:
        """Append ``delta``; return (text safe to emit now, the stop string hit or None)."""
        text = self.pending + delta
        hit: tuple[int, str] | None = None  # (start in text, stop string), the earliest start wins
        for automaton in self.automata:
            end = automaton.feed(delta)
            if end >= 0:
                start = len(self.pending) + end - len(automaton.stop)  # >= 0: its beginning was held back
                hit = min(hit, (start, automaton.stop)) if hit else (start, automaton.stop)
        if hit is not None:
            start, stop = hit
            self.pending = ""
            return text[: start + (len(stop) if self.include else 0)], stop
        held = max((automaton.matched for automaton in self.automata), default=0)
        self.pending = text[len(text) - held :]
        return text[: len(text) - held], None

    def finish(self) -> str:
        out, self.pending = self.pending, ""
        return out


class _StopAutomaton:
    def __init__(self, stop: str):
        self.stop = stop
        self.matched = 0  # the longest prefix of ``stop`` the text so far ends with
        # fallback[i]: the longest proper prefix of stop[: i + 1] that is also its suffix
        self.fallback = [0] * len(stop)
        length = 0
        for i in range(1, len(stop)):
            while length and stop[i] != stop[length]:
                length = self.fallback[length - 1]
            if stop[i] == stop[length]:
                length += 1
            self.fallback[i] = length

    def feed(self, text: str) -> int:
        """Advance over ``text``; return the index in it just past the first complete
        occurrence of the stop string, or -1."""
        stop, fallback, matched = self.stop, self.fallback, self.matched
        for index, char in enumerate(text):
            while matched and stop[matched] != char:
                matched = fallback[matched - 1]
            if stop[matched] == char:
                matched += 1
                if matched == len(stop):
                    self.matched = 0
                    return index + 1
        self.matched = matched
        return -1


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's (GPT-2's) alphabet: the character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {chr(byte): byte for byte in printable}  # printable bytes stand for themselves
    unprintable = [byte for byte in range(256) if byte not in printable]
    alphabet.update({chr(256 + index): byte for index, byte in enumerate(unprintable)})  # the rest, from U+0100 on
    return alphabet


BYTE_LEVEL_ALPHABET = _byte_level_alphabet()
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenBytes:
    """The UTF-8 bytes one token stands for, which may be part of a character (a
    token's decoded text then reads U+FFFD). Byte-level BPE pieces map back through
    their alphabet, SentencePiece byte-fallback pieces (<0xE2>) are their byte."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = "ByteLevel" in str(decoder)
        self.special_ids = set(tokenizer.all_special_ids)

    def __call__(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None or token_id in self.special_ids:
            return self.tokenizer.decode([token_id]).encode()
        if self.byte_level and all(char in BYTE_LEVEL_ALPHABET for char in piece):
            return bytes(BYTE_LEVEL_ALPHABET[char] for char in piece)
        if fallback := BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(fallback.group(1), 16)])
        return piece.replace("\u2581", " ").encode()  # SentencePiece's word boundary is a space
