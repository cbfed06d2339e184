"""What every endpoint reads: the settings, the engine client, metrics, the served
names, and the model's tokenizer-side helpers (chat rendering, token bytes)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nanovllm_api.chat_template import ChatRenderer
from nanovllm_api.config import ServerConfig
from nanovllm_api.errors import BadRequest, NotFound, Unavailable
from nanovllm_api.metrics import Metrics
from nanovllm_api.protocol.common import IGNORED_FIELDS, RequestModel, UNSUPPORTED_FIELDS
from nanovllm_core.detokenizer import TokenBytes
from nanovllm_core.engine_client import EngineClient, EngineUnavailable
from nanovllm_core.errors import ContextLengthError
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.reasoning import AnswerOnly, ReasoningParser, ReasoningStream
from nanovllm_core.tool_calls import ToolCallParser


@dataclass
class ServingContext:
    config: ServerConfig
    engine: EngineClient
    metrics: Metrics
    model_names: list[str]
    chat_template: str | None = None  # resolved once the tokenizer is loaded
    tool_parser: ToolCallParser | None = None  # likewise, as the default depends on the template
    reasoning_parser: ReasoningParser | None = None  # --reasoning-parser
    _renderer: ChatRenderer | None = field(default=None, repr=False)
    _token_bytes: TokenBytes | None = field(default=None, repr=False)
    _max_prompt_chars: int | None = field(default=None, repr=False)

    @property
    def model(self) -> ModelInfo:
        try:
            return self.engine.model_info
        except EngineUnavailable as error:
            raise Unavailable(str(error)) from error

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def renderer(self) -> ChatRenderer:
        if self._renderer is None:
            self._renderer = ChatRenderer(self.tokenizer, self.chat_template, self.tool_parser)
        return self._renderer

    @property
    def token_bytes(self) -> TokenBytes:
        if self._token_bytes is None:
            self._token_bytes = TokenBytes(self.tokenizer)
        return self._token_bytes

    def check_prompt_chars(self, chars: int) -> None:
        """Refuse, before tokenizing, text that cannot fit in the context however it is
        tokenized: no token covers more characters than the vocabulary's longest."""
        max_model_len = self.model.max_model_len
        if self._max_prompt_chars is None:
            longest_token = max(len(piece) for piece in self.tokenizer.get_vocab())
            self._max_prompt_chars = max_model_len * longest_token
        if chars > self._max_prompt_chars:
            raise ContextLengthError(
                f"This model's maximum context length is {max_model_len} tokens; the prompt's {chars} "
                f"characters are more than that many tokens can hold. Please shorten the prompt."
            )

    def reasoning_stream(self, prompt: str) -> ReasoningStream | AnswerOnly:
        """One output's splitter into reasoning and answer, after the rendered ``prompt``."""
        return self.reasoning_parser.stream(prompt) if self.reasoning_parser else AnswerOnly()

    def split_reasoning(self, text: str, prompt: str) -> tuple[str | None, str]:
        """(reasoning, answer) of a whole output; reasoning None where the model did not think."""
        return self.reasoning_parser.split(text, prompt) if self.reasoning_parser else (None, text)

    def thinking_end_token_ids(self, prompt: str) -> tuple[int, ...]:
        """Where constraints start: after the end tag, when the output starts with thinking
        (nothing when the prompt ended it already, or without a reasoning parser)."""
        parser = self.reasoning_parser
        if parser is None or parser.closes_in_prompt(prompt):
            return ()
        return tuple(self.tokenizer.encode(parser.end_tag, add_special_tokens=False))

    async def prompt_token_ids(self, prompt: str | list, param: str) -> list[list[int]]:
        """Text, texts, token ids or lists of token ids, as token-id lists; the text is
        bounded first, then tokenized off the event loop."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise BadRequest(f"{param} must not be empty", param=param)
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        for text in prompt:
            if isinstance(text, str):
                self.check_prompt_chars(len(text))
        tokenizer = self.tokenizer
        return await asyncio.to_thread(
            lambda: [tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else list(p) for p in prompt]
        )

    def guard(self, request: RequestModel, task: str | None) -> None:
        """The one check every request passes first, in this order: no field that would be
        ignored (400), a model this server serves (404), one that serves ``task`` (400)."""
        check_fields(request)
        self.check_model(request.model)
        if task is not None:
            self.model.check_task(task)

    def served_name(self, requested: str | None) -> str:
        """The name the response gives the model (the guard has checked it)."""
        return requested or self.model_names[0]

    def check_model(self, name: str | None) -> str:
        if name is None:
            return self.model_names[0]
        if name not in self.model_names and not self.config.accept_any_model_name:
            raise NotFound(f"The model '{name}' does not exist. Served: {', '.join(self.model_names)}.",
                           param="model", code="model_not_found")
        return name


def check_fields(request: RequestModel) -> None:
    """Refuse fields that would otherwise be silently ignored."""
    for name in request.unknown_fields():
        value = request.model_extra[name]
        if name in UNSUPPORTED_FIELDS:
            if value is not None:
                raise BadRequest(f"'{name}' is not supported by this server yet.", param=name, code="unsupported_parameter")
        elif name not in IGNORED_FIELDS:
            raise BadRequest(f"Unrecognized request argument supplied: {name}", param=name)
