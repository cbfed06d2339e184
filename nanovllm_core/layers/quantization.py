"""Quantized weights on the CPU, in GGUF's blocks of 32 inputs: int8 (Q8_0, one
scale per block) and int4 (Q4_1, a scale and a minimum per block). The C++
kernels compute with the blocks at every batch size, so a quantized layer keeps
no full-precision copy of its weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanovllm_core import cpu_kernels

BLOCK = 32  # weights per scale (and minimum), along the input
# From this many rows of bf16 activations on, on a CPU with native bf16 matmuls, a layer's
# weights turned back into bf16 for the call and multiplied by oneDNN beat the integer
# kernel, that pass included (measured over SmolLM2's projections: docs/benchmarks.md)
BF16_MATMUL_MIN_ROWS = 64
# Larger temporaries are mapped afresh by malloc on every call (glibc's largest mmap
# threshold), and their page faults cost more than the matmul gains: an LM head stays integer.
BF16_MATMUL_MAX_BYTES = 32 << 20


def uses_bf16_matmul(x: torch.Tensor, weights: int) -> bool:
    """Whether ``x @ w.T`` is faster through a bf16 copy of the ``weights`` weights made for
    the call than through the integer kernel (float32 activations never are)."""
    return (x.dtype == torch.bfloat16 and x.shape[0] >= BF16_MATMUL_MIN_ROWS and 2 * weights <= BF16_MATMUL_MAX_BYTES
            and cpu_kernels.cpu_has_bf16())


@dataclass
class Int8Weight:
    """``values * scale`` per block of 32 inputs (GGUF's Q8_0)."""

    values: torch.Tensor  # int8, [out, in]
    scales: torch.Tensor  # float16, [out, in / 32]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if uses_bf16_matmul(x, self.values.numel()):
            return F.linear(x, cpu_kernels.int8_dequantize(self.values, self.scales))
        return cpu_kernels.int8_linear(x, self.values, self.scales)

    def dequantize(self) -> torch.Tensor:
        out_features, in_features = self.values.shape
        blocks = self.values.float().view(out_features, -1, BLOCK) * self.scales.float()[..., None]
        return blocks.view(out_features, in_features)


@dataclass
class Int4Weight:
    """``q * scale + min`` per block of 32 inputs, q in 0..15 (GGUF's Q4_1)."""

    packed: torch.Tensor  # uint8, [out, in / 2]: byte i of a block holds q[i] (low nibble) and q[i + 16]
    scales: torch.Tensor  # float16, [out, in / 32]
    mins: torch.Tensor  # float16, [out, in / 32]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if uses_bf16_matmul(x, 2 * self.packed.numel()):
            return F.linear(x, cpu_kernels.int4_dequantize(self.packed, self.scales, self.mins))
        return cpu_kernels.int4_linear(x, self.packed, self.scales, self.mins)

    def dequantize(self) -> torch.Tensor:
        out_features = self.packed.shape[0]
        packed = self.packed.view(out_features, -1, BLOCK // 2)
        steps = torch.cat([packed & 0x0F, packed >> 4], dim=-1).float()  # q in input order
        blocks = steps * self.scales.float()[..., None] + self.mins.float()[..., None]
        return blocks.view(out_features, -1)


QuantizedWeight = Int8Weight | Int4Weight


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Round ``weight`` to int8 per block of 32 inputs, symmetric (as GGUF's Q8_0)."""
    out_features, in_features = weight.shape
    blocks = weight.float().view(out_features, in_features // BLOCK, BLOCK)
    # computed with the float16 scale that is stored, so the rounding matches what the kernel multiplies
    scales = (blocks.abs().amax(dim=-1) / 127).half().float()
    values = torch.round(blocks / scales.clamp(min=1e-30)[..., None]).clamp(-127, 127).to(torch.int8)
    return Int8Weight(values.view(out_features, in_features).contiguous(), scales.half())


def quantize_int4(weight: torch.Tensor) -> Int4Weight:
    """Round ``weight`` to 4 bits per block of 32 inputs, asymmetric (min to max in
    15 steps, as GGUF's Q4_1). Weights that came from a Q4_1 GGUF get their own
    blocks back (up to the float16 rounding of scale and minimum)."""
    out_features, in_features = weight.shape
    blocks = weight.float().view(out_features, in_features // BLOCK, BLOCK)
    mins = blocks.amin(dim=-1).half().float()
    scales = ((blocks.amax(dim=-1) - mins) / 15).half().float()
    steps = torch.round((blocks - mins[..., None]) / scales.clamp(min=1e-30)[..., None]).clamp(0, 15)
    q = steps.to(torch.uint8)
    packed = (q[..., : BLOCK // 2] | (q[..., BLOCK // 2 :] << 4)).reshape(out_features, in_features // 2)
    return Int4Weight(packed.contiguous(), scales.half(), mins.half())


def quantize_model_(model: nn.Module, method: str) -> int:
    """Quantize (``int8`` or ``int4``) every layer that can compute from a quantized
    weight and whose input size is a multiple of 32; returns how many.

    A layer drops its full-precision weight unless another module shares it (an LM
    head tied to the embeddings, which still look rows up in it). Under int4,
    layers marked ``keeps_int8`` get int8 (the LM head: llama.cpp's Q4 files keep
    it at 8 bits or more too)."""
    cpu_kernels.load()
    shared = {id(p) for m in model.modules() for p in m.parameters(recurse=False) if not hasattr(m, "quantized")}
    quantized = 0
    for layer in [module for module in model.modules() if hasattr(module, "quantized")]:
        weight = layer.weight
        if weight.shape[1] % BLOCK:
            continue
        int4 = method == "int4" and not getattr(layer, "keeps_int8", False)
        layer.quantized = quantize_int4(weight.data) if int4 else quantize_int8(weight.data)
        if id(weight) not in shared:
            layer.weight = nn.Parameter(torch.empty(0, dtype=weight.dtype), requires_grad=False)
        quantized += 1
    return quantized
