"""Engine settings: defaults < config file < ``NANOVLLM_*`` environment < explicit arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
CONFIG_FILE_SOURCES = {
    ".yaml": YamlConfigSettingsSource,
    ".yml": YamlConfigSettingsSource,
    ".toml": TomlConfigSettingsSource,
    ".json": JsonConfigSettingsSource,
}


class ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the YAML / TOML / JSON file named by the ``config_file`` setting.

    It runs after the explicit arguments and the environment, so it sees the
    file name from either, and its values rank below both.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config_file")
        if not path:
            return {}
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        source_cls = CONFIG_FILE_SOURCES.get(path.suffix.lower())
        if source_cls is None:
            raise ValueError(f"config file {path.name!r}: use .yaml, .yml, .toml or .json")
        file_key = {YamlConfigSettingsSource: "yaml_file", TomlConfigSettingsSource: "toml_file"}.get(
            source_cls, "json_file"
        )
        values = source_cls(self.settings_cls, **{file_key: path})()
        unknown = set(values) - set(self.settings_cls.model_fields)
        if unknown:
            raise ValueError(f"config file {path.name!r} has unknown settings: {sorted(unknown)}")
        return values


class EngineConfig(BaseSettings):
    """Everything the engine needs to know; each field is also ``NANOVLLM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="NANOVLLM_", extra="forbid", validate_default=True)

    config_file: str | None = Field(None, description="YAML, TOML or JSON file with any of these settings.")
    model: str | None = Field(
        None, description="HF model directory, .gguf file, or hub id (org/name: downloaded into the Hugging Face "
        "cache, or read from it offline with HF_HUB_OFFLINE=1); empty serves the embedded SmolLM2-135M-Instruct."
    )
    tokenizer: str | None = Field(None, description="Tokenizer directory if it differs from the model's.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights and activations: auto picks bfloat16 where the hardware has it, else float32."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA when available.")
    max_num_seqs: int = Field(512, ge=1, description="Most sequences in one batch.")
    max_num_batched_tokens: int = Field(
        2048, ge=1, description="Most tokens in one step; longer prompts are prefilled in chunks of this size."
    )
    max_model_len: int = Field(4096, ge=1, description="Prompt + output tokens per sequence (capped to the model's).")
    block_size: int = Field(16, ge=1, description="Tokens per KV-cache block.")
    kv_cache_memory_gb: float | None = Field(
        None, gt=0, description="KV-cache size in GiB. On CPU the cache holds what max_num_seqs sequences of "
        "max_model_len tokens can use, at most this (empty: 2 GiB); on CUDA, empty: from gpu_memory_utilization."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory the engine may use.")
    tensor_parallel_size: int = Field(1, ge=1, description="Processes the model's weights are split across.")
    attention_backend: str = Field("auto", description="Attention backend by name; auto picks the fastest installed.")
    sampler: str = Field("default", description="Sampler by name, from an installed plugin.")
    grammar_backend: str = Field(
        "xgrammar", description="Structured-output (grammar) backend by name, from an installed plugin."
    )
    quantization: Literal["auto", "none", "int8", "int4"] = Field(
        "auto", description="Quantized linear layers and LM head on the CPU, in blocks of 32 inputs, computed with "
        "integer dot products: int8 (as GGUF's Q8_0) reads half of bfloat16's bytes, int4 (as Q4_1) under a third, "
        "and no full-precision copy is kept. auto: a GGUF file's own precision (Q4 types run as int4, Q5-Q8 as "
        "int8, float types unquantized), none for other checkpoints and on GPU. none: the model's dtype."
    )
    generation_config: Literal["auto", "none"] = Field(
        "auto", description="auto: the model's generation_config.json sets the defaults of the sampling fields a "
        "request leaves out (temperature, top_p, top_k, min_p, repetition_penalty), as vLLM does, over its model "
        "card's defaults where nanovllm ships them (the embedded SmolLM2: temperature 0.2, top_p 0.9); none: "
        "OpenAI's defaults."
    )
    task: Literal["auto", "generate", "embed"] = Field(
        "auto", description="generate: completions and chat; embed: /v1/embeddings. auto: embed for a model that "
        "cannot generate (an encoder such as BERT) or a sentence-transformers checkpoint (modules.json), else generate."
    )
    pooler: str = Field(
        "auto", description="How an embedding pools its tokens' states: a registered pooler (mean, cls, last, max, "
        "or a plugin's); auto: as the checkpoint's sentence-transformers files say, else as the model prefers."
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of prompts that share a prefix.")
    enforce_eager: bool = Field(False, description="Never capture decode graphs (CUDA graphs on a GPU, recorded operators on a CPU).")
    seed: int = Field(0, description="Seed for requests that do not set their own.")
    load_format: Literal["auto", "dummy"] = Field(
        "auto", description="dummy: random weights from config.json alone, for speed benchmarks."
    )
    skip_tokenizer_init: bool = Field(
        False, description="Load no tokenizer: prompts must be token ids and outputs carry no text."
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _normalise_dtype(cls, value: Any) -> Any:
        return DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _every_sequence_fits_a_step(self) -> EngineConfig:
        # each running sequence needs a token of the step's budget; with fewer, the tail starves
        if self.max_num_batched_tokens >= self.max_num_seqs:
            return self
        if "max_num_seqs" not in self.model_fields_set:  # the default is only a ceiling: lower it
            self.max_num_seqs = self.max_num_batched_tokens
        else:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least max_num_seqs "
                f"({self.max_num_seqs}): every running sequence needs a token of each step"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, ConfigFileSource(settings_cls)
