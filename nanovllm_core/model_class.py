"""The model-class contract: what a registered model class must and may provide, and the
one place the core reads it (``ModelTraits.of``). Like the other contracts, this module
imports nothing of the engine.

A class is built as ``cls(hf_config)`` under the engine's dtype and device. Required:
``forward(input_ids, positions) -> hidden_states``. Optional members are the keys of
``OPTIONAL_MEMBERS``; a class member whose name is a near miss of one of them (a typo
such as ``stop_token``) is refused when the class is first used, since it would
otherwise be ignored without a word.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

OPTIONAL_MEMBERS = {
    "compute_logits": "compute_logits(hidden_states) -> logits [n, vocab]: the model generates",
    "default_pooler": "the registered pooler its embeddings use when the checkpoint does not say",
    "packed_modules_mapping": "checkpoint name fragment -> (fused parameter fragment, shard id)",
    "load_weights": "load_weights(weights): its own loader of (name, tensor) pairs",
    "gguf_tensor_names": "extra 'blk.N.x.weight' -> 'model.layers.N.y.weight' entries",
    "from_gguf": "from_gguf(name, tensor): a GGUF tensor as the Hugging Face checkpoint holds it",
    "default_chat_template": "a registered chat template's name, for checkpoints that carry none",
    "stop_tokens": "token strings that end generation as EOS does",
}
REQUIRED_MEMBERS = ("forward",)
NEAR_MISS_CUTOFF = 0.85  # 'stop_token' and 'default_pooling' are caught; 'model' and 'lm_head' are not


class ModelClass(Protocol):
    """A model as the runner calls it (the optional members: ``OPTIONAL_MEMBERS``)."""

    def __init__(self, hf_config) -> None: ...

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelTraits:
    """A model class's optional members, with their defaults."""

    name: str
    can_generate: bool
    default_pooler: str
    loads_own_weights: bool
    packed_modules_mapping: Mapping[str, tuple[str, object]]
    gguf_tensor_names: Mapping[str, str]
    from_gguf: Callable | None
    default_chat_template: str | None
    stop_tokens: tuple[str, ...]

    @classmethod
    def of(cls, model_class: type) -> ModelTraits:
        """The traits of ``model_class``; TypeError naming a missing member or a near miss."""
        check_members(model_class)
        return cls(
            name=model_class.__name__,
            can_generate=hasattr(model_class, "compute_logits"),
            default_pooler=getattr(model_class, "default_pooler", "last"),
            loads_own_weights=hasattr(model_class, "load_weights"),
            packed_modules_mapping=getattr(model_class, "packed_modules_mapping", {}),
            gguf_tensor_names=getattr(model_class, "gguf_tensor_names", {}),
            from_gguf=getattr(model_class, "from_gguf", None),
            default_chat_template=getattr(model_class, "default_chat_template", None),
            stop_tokens=tuple(getattr(model_class, "stop_tokens", ())),
        )


def check_members(model_class: type) -> None:
    for name in REQUIRED_MEMBERS:
        if not callable(getattr(model_class, name, None)):
            raise TypeError(f"model class {model_class.__name__} has no {name}(input_ids, positions)")
    for name in _own_members(model_class):
        if name in OPTIONAL_MEMBERS:
            continue
        near = difflib.get_close_matches(name, OPTIONAL_MEMBERS, n=1, cutoff=NEAR_MISS_CUTOFF)
        if near:
            raise TypeError(f"model class {model_class.__name__} defines {name!r}, which the engine never reads; "
                            f"did you mean {near[0]!r} ({OPTIONAL_MEMBERS[near[0]]})?")


def _own_members(model_class: type) -> set[str]:
    """Public names the class and its bases define, except PyTorch's own (nn.Module's)."""
    return {name for base in model_class.__mro__ if not base.__module__.startswith(("torch", "builtins"))
            for name in vars(base) if not name.startswith("_")}
