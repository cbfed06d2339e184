"""``ModelSpec``: everything about the model that is known before its weights load, read once.

The engine, the runner, the tensor-parallel ranks and the server share it: where the
model comes from, its Hugging Face config, its tokenizer, its class and what that class
provides, its EOS ids, the task it serves and the sampling defaults its checkpoint sets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import PretrainedConfig, PreTrainedTokenizerBase

from nanovllm_core import plugins
from nanovllm_core.config import EngineConfig
from nanovllm_core.loader import ModelSource, resolve_model
from nanovllm_core.model_class import ModelTraits
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.pooling import PoolerConfig

logger = logging.getLogger(__name__)

# what generation_config.json may set for requests that leave it out (vLLM's list)
SAMPLING_DEFAULT_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
# and what a model card's defaults (loader/card_defaults.json) may set besides
CARD_DEFAULT_FIELDS = (*SAMPLING_DEFAULT_FIELDS, "max_tokens", "stop")


@dataclass(frozen=True)
class ModelSpec:
    """``pooler_config``: how embeddings pool (task embed only); ``sampling_defaults``: what
    a request that leaves a sampling field out gets: the checkpoint's generation_config.json
    (SAMPLING_DEFAULT_FIELDS), over its model card's defaults as nanovllm ships them
    (CARD_DEFAULT_FIELDS)."""

    source: ModelSource
    hf_config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase | None
    model_class: type
    traits: ModelTraits
    eos_token_ids: frozenset[int]
    task: str
    pooler_config: PoolerConfig | None
    sampling_defaults: dict = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return self.hf_config.architectures[0]

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size

    def model_info(self, max_model_len: int) -> ModelInfo:
        """What request checks and the server need to know, for a runner whose cache and
        steps allow ``max_model_len``."""
        embeds = self.task == "embed"
        return ModelInfo(
            max_model_len, self.vocab_size, self.tokenizer, self.sampling_defaults, self.task,
            self.hf_config.hidden_size if embeds else None, _matryoshka(self.hf_config),
            self.traits.default_chat_template,
        )

    @classmethod
    def load(cls, config: EngineConfig, source: ModelSource | None = None, with_tokenizer: bool = True) -> ModelSpec:
        """Read the spec of ``config.model`` (``source``: already resolved). A tensor-parallel
        rank other than 0 passes ``with_tokenizer=False``: it neither reads text nor samples."""
        source = source or resolve_model(config.model, need_weights=config.load_format != "dummy")
        hf_config = source.load_config()
        load_tokenizer = with_tokenizer and not config.skip_tokenizer_init
        tokenizer = source.load_tokenizer(config.tokenizer) if load_tokenizer else None
        model_class = plugins.model_architectures().get(hf_config.architectures[0])
        traits = ModelTraits.of(model_class)
        generation_config = source.generation_config()
        task, pooler_config = _resolve_task(config, source, traits, hf_config.architectures[0])
        return cls(
            source=source, hf_config=hf_config, tokenizer=tokenizer, model_class=model_class, traits=traits,
            eos_token_ids=_eos_token_ids(hf_config, tokenizer, generation_config, traits),
            task=task, pooler_config=pooler_config,
            sampling_defaults=merge_sampling_defaults(config, generation_config, source.card_defaults()),
        )


def _eos_token_ids(hf_config, tokenizer, generation_config: dict, traits: ModelTraits) -> frozenset[int]:
    """The checkpoint's EOS ids (config, tokenizer, generation_config.json), and the ids of the
    model class's ``stop_tokens`` that the vocabulary has (GGUF files name a single EOS)."""
    ids: set[int] = set()
    candidates = [hf_config.eos_token_id, getattr(tokenizer, "eos_token_id", None),
                  generation_config.get("eos_token_id")]
    if traits.stop_tokens and tokenizer is not None:
        vocabulary = tokenizer.get_vocab()
        candidates.append([vocabulary[token] for token in traits.stop_tokens if token in vocabulary])
    for candidate in candidates:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif candidate:
            ids.update(candidate)
    return frozenset(ids)


def _resolve_task(config: EngineConfig, source: ModelSource, traits: ModelTraits,
                  architecture: str) -> tuple[str, PoolerConfig | None]:
    """generate or embed, and for embed how to pool: the checkpoint's sentence-transformers
    files, else the model class's preference (last token), normalised either way."""
    pooler_config = source.load_pooler_config()
    task = config.task
    if task == "auto":
        task = "embed" if not traits.can_generate or pooler_config is not None else "generate"
    if task == "generate" and not traits.can_generate:
        raise ValueError(f"{architecture} has no language-model head: it serves embeddings only (task embed)")
    if task == "generate":
        return task, None
    if pooler_config is None:
        pooler_config = PoolerConfig(traits.default_pooler, normalize=True)
    if config.pooler != "auto":
        pooler_config = PoolerConfig(config.pooler, pooler_config.normalize)
    plugins.poolers().get(pooler_config.pooler)  # an unknown name fails here, naming the installed ones
    logger.info("task embed: %s pooling%s", pooler_config.pooler, ", normalised" if pooler_config.normalize else "")
    return task, pooler_config


def merge_sampling_defaults(config: EngineConfig, generation_config: dict, card: dict) -> dict:
    """The sampling fields generation_config.json sets, as written there (not transformers' own
    defaults for the rest, such as top_k=50), over the model card's; logged with where each
    comes from. ``generation_config: none``: neither, OpenAI's defaults."""
    if config.generation_config == "none":
        return {}
    from_card = {name: card[name] for name in CARD_DEFAULT_FIELDS if card.get(name) is not None}
    from_checkpoint = {name: generation_config[name] for name in SAMPLING_DEFAULT_FIELDS
                       if generation_config.get(name) is not None}
    for origin, fields in (("its card, as nanovllm ships it", from_card),
                           ("the model's generation_config.json", from_checkpoint)):
        if fields:
            logger.info("sampling defaults from %s: %s", origin, fields)
    return {**from_card, **from_checkpoint}


def _matryoshka(hf_config) -> bool:
    """Whether embeddings may be cut short (``dimensions``): the config says it was trained
    for it, as vLLM reads it (``is_matryoshka`` or ``matryoshka_dimensions``)."""
    return bool(getattr(hf_config, "is_matryoshka", False) or getattr(hf_config, "matryoshka_dimensions", None))
