"""Linear layers that split over tensor-parallel ranks.

Each parameter carries a ``weight_loader(param, loaded, shard_id=None)`` that
copies this rank's slice of a full checkpoint tensor into it, so checkpoints
load unchanged whatever the tensor-parallel size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanovllm_core import cpu_kernels
from nanovllm_core.distributed import all_reduce, divide, get_tp_rank, get_tp_size


# Up to this many rows the weight-only quantized kernels beat the bf16 matmul on
# the CPU (measured per SmolLM2 projection for int8: 2.4-3.1x at 1 row, 0.8-1.4x
# at 8, 0.35-0.6x at 32); larger batches use the dequantized weight
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

    int8 on CPU runs our C++ kernel, which prefetches weight rows ahead and so
    reads them 1.4x faster than torch's ``_weight_int8pack_mm`` (measured over
    SmolLM2's 30 layers from memory); torch's kernel is the fallback. int4 needs
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


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, quantized: QuantizedWeight | None = None
) -> torch.Tensor:
    """F.linear, through the quantized kernel for a few rows when the weight has a
    quantized copy, with the rows of half-precision CPU inputs padded to a few sizes.

    oneDNN, which runs bf16/fp16 matmuls on the CPU, builds and caches a kernel
    with its own buffers for every distinct row count (about 0.6 MB each for a
    576x1536 weight, measured). Continuous batching changes the row count every
    step, so unpadded the cache, and the server's memory, grew by ~2 MB per
    request in a soak test. Eight sizes per power of two bound the cache at a
    cost of at most 1/8 more rows."""
    rows = x.shape[0]
    if quantized is not None and x.dim() == 2 and rows <= QUANTIZED_MAX_ROWS:
        out = quantized(x)
        return out if bias is None else out + bias
    if x.device.type != "cpu" or x.dtype == torch.float32 or x.dim() != 2:
        return F.linear(x, weight, bias)
    padded = padded_rows(rows)
    if padded == rows:
        return F.linear(x, weight, bias)
    return F.linear(F.pad(x, (0, 0, 0, padded - rows)), weight, bias)[:rows]


def padded_rows(rows: int) -> int:
    """``rows`` rounded up to one of eight steps per power of two (exact up to 8)."""
    step = max(1, (1 << (rows.bit_length() - 1)) >> 3)
    return -(-rows // step) * step


class LinearBase(nn.Module):
    def __init__(self, input_size: int, output_size: int, bias: bool, split_dim: int | None):
        super().__init__()
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.split_dim = split_dim  # 0: outputs split across ranks, 1: inputs, None: replicated
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.quantized: QuantizedWeight | None = None  # set by quantize_model_
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        if self.split_dim is not None and self.split_dim < loaded.dim():
            size = param.shape[self.split_dim]
            loaded = loaded.narrow(self.split_dim, self.tp_rank * size, size)
        param.data.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.quantized)


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(input_size, output_size, bias, split_dim=None)


class ColumnParallelLinear(LinearBase):
    """Each rank computes a slice of the outputs."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(input_size, divide(output_size, get_tp_size(), "output size"), bias, split_dim=0)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input fused into one
    matmul (e.g. gate and up); checkpoint shards load by index."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int = 0) -> None:
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        loaded = loaded.narrow(0, self.tp_rank * size, size)
        param.data.narrow(0, offset, size).copy_(loaded)


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q, k and v projections; each rank holds its share of the heads."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        tp_size = get_tp_size()
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp_size, "number of attention heads")
        self.num_kv_heads = divide(num_kv_heads, tp_size, "number of KV heads")
        output_size = (num_heads + 2 * num_kv_heads) * head_dim
        super().__init__(hidden_size, output_size, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str = "q") -> None:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        size, offset = {"q": (q_size, 0), "k": (kv_size, q_size), "v": (kv_size, q_size + kv_size)}[shard_id]
        loaded = loaded.narrow(0, self.tp_rank * size, size)
        param.data.narrow(0, offset, size).copy_(loaded)


class RowParallelLinear(LinearBase):
    """Each rank holds a slice of the inputs; partial outputs are summed across ranks."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(divide(input_size, get_tp_size(), "input size"), output_size, bias, split_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the bias is added once, after the sum
        out = all_reduce(linear(x, self.weight, quantized=self.quantized))
        return out if self.bias is None else out + self.bias
