"""Weight-only quantization for the CPU: int8 per output channel, int4 in GGUF
Q4_1's groups of 32, and the C++ kernels that compute with them for a few rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nanovllm_core import cpu_kernels

# Up to this many rows the weight-only quantized kernels beat the bf16 matmul on
# the CPU (measured per projection: docs/benchmarks.md); larger batches use the dequantized weight
QUANTIZED_MAX_ROWS = 4
INT4_GROUP = 32  # weights per int4 scale and minimum, along the input (GGUF's Q4_1 block)


@dataclass
class Int8Weight:
    """A weight rounded to int8 per output channel: ``values * scales[:, None]``."""

    values: torch.Tensor  # int8, [out, in]
    scales: torch.Tensor  # [out], in the activations' dtype
    # (x, values, scales) -> x @ weight.T for a few rows of x
    matmul: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = torch._weight_int8pack_mm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.values, self.scales)


@dataclass
class Int4Weight:
    """A weight rounded to 4 bits in groups of 32 inputs: ``q * scale + min`` per group."""

    packed: torch.Tensor  # uint8, [out, in / 2]: byte i of a group holds q[i] and q[i + 16]
    scales: torch.Tensor  # float16, [out, in / 32]
    mins: torch.Tensor  # float16, [out, in / 32]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_kernels.int4_linear(x, self.packed, self.scales, self.mins)


QuantizedWeight = Int8Weight | Int4Weight


def quantize_int8_(weight: torch.Tensor, matmul=torch._weight_int8pack_mm) -> Int8Weight:
    """Round ``weight`` to int8 per output channel. The weight itself is replaced
    by the rounded values, so every batch size computes with the same weights:
    small batches through the int8 kernel (reading a quarter of the fp32 bytes,
    half of bf16's), large ones through the usual matmul."""
    full = weight.float()
    scales = (full.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    values = torch.round(full / scales[:, None]).clamp(-127, 127).to(torch.int8)
    weight.copy_(values.float() * scales[:, None])
    return Int8Weight(values, scales.to(weight.dtype), matmul)


def quantize_int4_(weight: torch.Tensor) -> Int4Weight:
    """Round ``weight`` to 4 bits per group of 32 inputs, asymmetric (min to max in
    15 steps, as GGUF's Q4_1), and replace it by the rounded values like
    ``quantize_int8_``. A model that came from a Q4_1 GGUF gets its own blocks
    back, up to the rounding of the weights to the model's dtype."""
    out_features, in_features = weight.shape
    groups = weight.float().view(out_features, in_features // INT4_GROUP, INT4_GROUP)
    # computed with the float16 values that are stored, so the kernel and the weight agree
    mins = groups.amin(dim=-1).half().float()
    scales = ((groups.amax(dim=-1) - mins) / 15).half().float()
    steps = torch.round((groups - mins[..., None]) / scales.clamp(min=1e-30)[..., None]).clamp(0, 15)
    weight.copy_((steps * scales[..., None] + mins[..., None]).view(out_features, in_features))
    q = steps.to(torch.uint8)
    packed = (q[..., : INT4_GROUP // 2] | (q[..., INT4_GROUP // 2 :] << 4)).reshape(out_features, in_features // 2)
    return Int4Weight(packed.contiguous(), scales.half(), mins.half())


def quantize_model_(model: nn.Module, method: str) -> int:
    """Quantize (``int8`` or ``int4``) every layer that can compute from a quantized weight; returns how many.

    int8 on CPU runs our C++ kernel, which prefetches weight rows ahead (faster than
    torch's ``_weight_int8pack_mm``: docs/benchmarks.md); torch's kernel is the fallback. int4 needs
    the C++ kernels. Under int4, layers marked ``keeps_int8`` (the LM head: llama.cpp's
    Q4 files keep it at 8 bits too) and those whose input size is not a multiple
    of 32 get int8."""
    if method == "int4":
        cpu_kernels.load()
    matmul = cpu_kernels.int8_linear if cpu_kernels.loaded() else torch._weight_int8pack_mm
    layers = [module for module in model.modules() if hasattr(module, "quantized")]
    for layer in layers:
        weight = layer.weight.data
        if method == "int4" and not getattr(layer, "keeps_int8", False) and weight.shape[1] % INT4_GROUP == 0:
            layer.quantized = quantize_int4_(weight)
        else:
            layer.quantized = quantize_int8_(weight, matmul)
    return len(layers)
