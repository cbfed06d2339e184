"""Builds the model class under the engine's dtype and device, fills its weights, quantizes it."""

from __future__ import annotations

import logging

import torch
from torch import nn

from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.model_spec import ModelSpec
from nanovllm_core.engine.platform import resolve_quantization
from nanovllm_core.layers.quantization import quantize_model_
from nanovllm_core.loader import load_model_weights

logger = logging.getLogger(__name__)


def build_model(spec: ModelSpec, config: EngineConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = spec.model_class(spec.hf_config)
    finally:
        torch.set_default_dtype(previous_dtype)
    if config.load_format == "dummy":
        _randomise(model)
    else:
        load_model_weights(model, spec.source, spec.hf_config, spec.traits)
    method = resolve_quantization(config, spec.source, device, dtype)
    if method != "none":
        count = quantize_model_(model, method)
        logger.info("%s quantized linear layers: %d", method, count)
    return model.eval()


@torch.no_grad()
def _randomise(model: nn.Module) -> None:
    """Small random weights, for benchmarks where only speed matters."""
    for param in model.parameters():
        param.uniform_(-0.02, 0.02) if param.dim() > 1 else param.fill_(1.0)
