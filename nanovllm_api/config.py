"""Server settings: the engine's, plus how the server is reached and guarded."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from nanovllm_core import plugins
from nanovllm_core.config import EngineConfig


# settings that name a parser, and where the installed ones are registered
PARSER_REGISTRIES = {"tool_call_parser": plugins.tool_call_parsers, "reasoning_parser": plugins.reasoning_parsers}


class ServerConfig(EngineConfig):
    host: str = Field(
        "127.0.0.1", description="Address to bind. The default keeps a fresh start off the network (the original "
        "nanovllm server bound 0.0.0.0); --host 0.0.0.0 serves other machines too."
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one).")
    served_model_name: list[str] | None = Field(
        None, description="Names clients use in `model`; the first is reported. Default: the model's name."
    )
    accept_any_model_name: bool = Field(
        False, description="Serve a request whatever `model` it names, echoing that name, as llama.cpp's server "
        "and the original nanovllm server do; off: an unknown name gets vLLM's 404."
    )
    chat_template: str | None = Field(
        None, description="A registered template name or a Jinja file path; default: the checkpoint's own "
        "template, else the one its model plugin names (Gemma's for a Gemma GGUF), else ChatML."
    )
    tool_call_parser: str | None = Field(
        None, description="How the model writes tool calls: a registered parser (see --list-plugins); "
        "default: hermes if the chat template renders tool calls, else smollm2."
    )
    reasoning_parser: str | None = Field(
        None, description="How the model marks its thinking (qwen3, deepseek_r1, or a plugin's; see --list-plugins): "
        "the thinking goes to message.reasoning_content, tool calls and response_format apply to the answer. "
        "Default: none, all output is content."
    )
    data_parallel_size: int = Field(
        1, ge=1, description="Engine replicas behind this server, each in a process of its own with its own KV "
        "cache and its own cores (on CPU) or its own tensor_parallel_size GPUs. A request goes to the replica that "
        "has its prompt's prefix cached unless that one is overloaded, else to the least loaded. 1: the engine runs "
        "on a thread of the server's process."
    )
    replica_timeout: float = Field(
        60, gt=0, description="Seconds a data-parallel replica may go without a heartbeat (it sends one every "
        "0.25 s), or with work and no finished step, before it counts as hung: it is killed, its requests fail "
        "with a 500 and the rest serve on (/health says degraded). Keep it above the longest step (a prefill of "
        "max_num_batched_tokens), which a large model on a few CPU cores can take a minute for."
    )
    threads_per_replica: int | None = Field(
        None, ge=1, description="CPU threads of each data-parallel replica, each pinned to its own cores "
        "(NUMA node by node); default: the usable cores split evenly."
    )
    api_key: str | None = Field(None, description="Require `Authorization: Bearer KEY` on /v1/* (also NANOVLLM_API_KEY).")
    webui: bool = Field(True, description="Serve the chat page at / (--no-webui: / is a 404).")
    root_path: str = Field(
        "", description="The path prefix a reverse proxy serves this server under (e.g. /llm), for the links "
        "of /docs; the chat page uses relative URLs and works under any prefix."
    )
    max_queued_sequences: int = Field(
        256, ge=0, description="Sequences that may wait beyond max_num_seqs; more are refused with 429."
    )
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body; larger gets 413.")
    request_timeout: float | None = Field(
        None, gt=0, description="Seconds a request may take before it is aborted; empty: no limit."
    )
    client_read_timeout: float = Field(
        60, gt=0, description="Seconds a streaming client may stop reading while its tokens wait; then the request "
        "is aborted and its slot freed."
    )
    grammar_compile_timeout: float = Field(
        10, gt=0, description="Seconds a response_format or tools constraint may take to be checked and compiled, "
        "in one of two worker processes (killed and replaced past it); longer is a 400. Waiting for a free "
        "worker does not count."
    )
    shutdown_timeout: float = Field(
        30, ge=0, description="On SIGTERM, seconds in-flight requests get to finish before the server exits anyway."
    )
    cors_allowed_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS, e.g. '*'; empty: CORS off."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logging level.")

    @field_validator(*PARSER_REGISTRIES)
    @classmethod
    def _installed_parser(cls, name: str | None, info: ValidationInfo) -> str | None:
        parsers = PARSER_REGISTRIES[info.field_name]()
        if name is not None and name not in parsers:
            raise ValueError(parsers.describe_missing(name))
        return name

    @model_validator(mode="after")
    def _needs_a_tokenizer(self) -> "ServerConfig":
        if self.skip_tokenizer_init:
            raise ValueError("skip_tokenizer_init is for offline use; the server needs the tokenizer")
        return self
