"""Copy checkpoint tensors into a model's (possibly fused, possibly sharded) parameters."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from nanovllm_core.loader.gguf_metadata import gguf_settings
from nanovllm_core.loader.gguf_weights import gguf_weights
from nanovllm_core.loader.source import ModelSource
from nanovllm_core.model_class import ModelTraits

logger = logging.getLogger(__name__)

# checkpoint entries that models compute themselves
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def safetensors_weights(directory: Path) -> tuple[int, Iterator[tuple[str, torch.Tensor]]]:
    """The number of tensors, and an iterator that reads them one at a time."""
    files = sorted(directory.glob("*.safetensors"))
    total = 0
    for file in files:
        with safe_open(file, framework="pt") as handle:
            total += len(handle.keys())
    return total, _iterate_safetensors(files)


def _iterate_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def load_model_weights(model: nn.Module, source: ModelSource, config, traits: ModelTraits) -> None:
    if source.is_gguf:
        total, weights = gguf_weights(source.path, gguf_settings(source.path)["tensors"], config, traits)
    else:
        total, weights = safetensors_weights(source.path)
    progress = tqdm(weights, total=total, desc=f"Loading {source.name}", unit="tensor", leave=False)
    if traits.loads_own_weights:
        model.load_weights(progress)
    else:
        load_weights(model, progress, traits.packed_modules_mapping)


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                 packed: Mapping[str, tuple[str, object]] | None = None) -> None:
    """The generic loader: ``packed`` (the model class's ``packed_modules_mapping``) routes
    the parts of fused parameters (e.g. q_proj -> qkv_proj shard "q"); every parameter must
    be filled exactly once, and every checkpoint tensor must find a home."""
    params = dict(model.named_parameters(remove_duplicate=False))
    packed = packed or {}
    loaded: set[str] = set()
    for name, tensor in weights:
        if name.endswith(IGNORED_SUFFIXES):
            continue
        target, shard_id = _route(name, packed)
        if target not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in {type(model).__name__}")
        param = params[target]
        loader = getattr(param, "weight_loader", None)
        tensor = tensor.to(param.dtype)
        if loader is None:
            param.data.copy_(tensor)
        elif shard_id is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard_id)
        loaded.add(target)
    _check_complete(model, params, loaded)


def _route(name: str, packed: dict[str, tuple[str, object]]) -> tuple[str, object]:
    for fragment, (fused, shard_id) in packed.items():
        if f".{fragment}." in name:
            return name.replace(f".{fragment}.", f".{fused}."), shard_id
    return name, None


def _check_complete(model: nn.Module, params: dict[str, nn.Parameter], loaded: set[str]) -> None:
    by_tensor: dict[int, list[str]] = {}
    for name, param in params.items():
        by_tensor.setdefault(id(param), []).append(name)
    missing = [names[0] for names in by_tensor.values() if not loaded.intersection(names)]
    if missing:
        raise ValueError(f"checkpoint lacks weights for {type(model).__name__}: {missing[:8]}")
