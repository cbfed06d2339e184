"""Reasoning output: how a model family marks its thinking, and the text split into
reasoning and answer, whole or as it streams (a contract: it imports nothing of the engine).

A parser is registered through the ``register_reasoning_parsers`` hook. The
built-ins read ``<think>...</think>``: ``qwen3`` finds the thinking only
where the output opens it; ``deepseek_r1`` starts inside it, because
DeepSeek-R1's chat template opens it in the prompt. Both start inside the
thinking when the rendered prompt ends with the start tag (a template that
opens it), and see none when it ends with the end tag (a template asked not
to think writes an empty section).
"""

from __future__ import annotations

from enum import Enum, auto


class ReasoningParser:
    """Base class of reasoning parsers; subclasses set the tags and where the thinking starts."""

    start_tag = "<think>"
    end_tag = "</think>"
    starts_in_reasoning = False  # True: the output starts inside the thinking, whatever the prompt

    def opens_in_prompt(self, prompt: str) -> bool:
        """Whether the output starts inside the thinking after ``prompt`` (the rendered chat)."""
        return self.starts_in_reasoning or prompt.rstrip().endswith(self.start_tag)

    def closes_in_prompt(self, prompt: str) -> bool:
        """Whether the prompt ends the thinking itself (a template asked not to think writes
        an empty section), so the output is all answer."""
        return prompt.rstrip().endswith(self.end_tag)

    def stream(self, prompt: str = "") -> ReasoningStream:
        return ReasoningStream(self, self.opens_in_prompt(prompt) and not self.closes_in_prompt(prompt))

    def split(self, text: str, prompt: str = "") -> tuple[str | None, str]:
        """(reasoning, answer) of a whole output; reasoning is None where there is no thinking."""
        stream = self.stream(prompt)
        reasoning, answer = stream.feed(text)
        more_reasoning, more_answer = stream.finish()
        return (reasoning + more_reasoning if stream.saw_reasoning else None), answer + more_answer


class Qwen3ReasoningParser(ReasoningParser):
    pass


class DeepSeekR1ReasoningParser(ReasoningParser):
    starts_in_reasoning = True


class AnswerOnly:
    """The stream of a model served without a reasoning parser: everything is answer."""

    def feed(self, text: str) -> tuple[str, str]:
        return "", text

    def finish(self) -> tuple[str, str]:
        return "", ""


class _State(Enum):
    OPENING = auto()  # may still see the start tag (after whitespace)
    REASONING = auto()
    AFTER_REASONING = auto()  # the answer's leading whitespace is dropped
    ANSWER = auto()


class ReasoningStream:
    """One output's text, piece by piece, as (reasoning, answer) deltas. Text that may
    be the start of a tag is held back until the next piece says what it is."""

    def __init__(self, parser: ReasoningParser, opens_inside: bool):
        self.parser = parser
        self.opens_inside = opens_inside
        self.state = _State.OPENING
        self.saw_reasoning = False
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        text = self._held + text
        self._held = ""
        reasoning = answer = ""
        if self.state is _State.OPENING:
            text = self._open(text)
        if self.state is _State.REASONING:
            reasoning, text = self._reason(text)
        if self.state is _State.AFTER_REASONING:
            text = text.lstrip()
            if text:
                self.state = _State.ANSWER
        if self.state is _State.ANSWER:
            answer = text
        return reasoning, answer

    def finish(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        if self.state is _State.OPENING:
            return (held, "") if self.opens_inside else ("", held)
        return (held, "") if self.state is _State.REASONING else ("", "")

    def _open(self, text: str) -> str:
        """Before any reasoning or answer: the start tag (leading whitespace allowed) opens the
        thinking; anything else means there is none, unless the prompt opened it."""
        tag = self.parser.start_tag
        stripped = text.lstrip()
        if stripped.startswith(tag):
            self._begin_reasoning()
            return stripped[len(tag):]
        if tag.startswith(stripped):  # whitespace or a part of the tag so far: wait
            self._held = text
            return ""
        if self.opens_inside:
            self._begin_reasoning()
        else:
            self.state = _State.ANSWER
        return text

    def _begin_reasoning(self) -> None:
        self.state = _State.REASONING
        self.saw_reasoning = True

    def _reason(self, text: str) -> tuple[str, str]:
        """The reasoning in ``text`` and what follows the end tag, if it came."""
        tag = self.parser.end_tag
        end = text.find(tag)
        if end >= 0:
            self.state = _State.AFTER_REASONING
            return text[:end], text[end + len(tag):]
        keep = _partial_tag_length(text, tag)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], ""


def _partial_tag_length(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag``."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0
