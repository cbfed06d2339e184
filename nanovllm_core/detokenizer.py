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
    """Accumulates text; reports the first stop string and what is safe to emit."""

    def __init__(self, stop: list[str], include_stop_str_in_output: bool):
        self.stop = stop
        self.include = include_stop_str_in_output
        self.text = ""
        self.emitted = 0  # characters of ``text`` already handed out

    def add(self, delta: str) -> tuple[str, str | None]:
        """Append ``delta``; return (text safe to emit now, the stop string hit or None)."""
        search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += delta
        hit = self._find_stop(search_from)
        if hit is not None:
            position, stop = hit
            self.text = self.text[: position + (len(stop) if self.include else 0)]
            return self._emit(len(self.text)), stop
        return self._emit(len(self.text) - self._partial_stop_length()), None

    def finish(self) -> str:
        return self._emit(len(self.text))

    def _find_stop(self, search_from: int) -> tuple[int, str] | None:
        hits = [(self.text.find(s, search_from), s) for s in self.stop]
        hits = [(position, s) for position, s in hits if position >= 0]
        return min(hits) if hits else None

    def _partial_stop_length(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        longest = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if stop.startswith(self.text[-length:]):
                    longest = length
                    break
        return longest

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out, self.emitted = self.text[self.emitted : upto], upto
        return out


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
