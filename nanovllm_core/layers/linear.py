"""Linear layers that split over tensor-parallel ranks.

Each parameter carries a ``weight_loader(param, loaded, shard_id=None)`` that
copies this rank's slice of a full checkpoint tensor into it, so checkpoints
load unchanged whatever the tensor-parallel size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanovllm_core.distributed import all_reduce, divide, get_tp_rank, get_tp_size
from nanovllm_core.layers.quantization import QuantizedWeight


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, quantized: QuantizedWeight | None = None
) -> torch.Tensor:
    """F.linear, through the quantized kernel when the layer's weight is quantized
    (``weight`` is then empty), with the rows of half-precision CPU inputs padded to a few sizes.

    oneDNN, which runs bf16/fp16 matmuls on the CPU, builds and caches a kernel
    with its own buffers for every distinct row count (about 0.6 MB each for a
    576x1536 weight, measured). Continuous batching changes the row count every
    step, so unpadded the cache, and the server's memory, grew by ~2 MB per
    request in a soak test. Eight sizes per power of two bound the cache at a
    cost of at most 1/8 more rows."""
    if quantized is not None:
        out = quantized(x) if x.dim() == 2 else quantized(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)
        return out if bias is None else out + bias
    rows = x.shape[0]
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


# ``packed_modules_mapping`` for models that fuse Hugging Face's q/k/v_proj into a
# QKVParallelLinear named qkv_proj and gate/up_proj into a MergedColumnParallelLinear named gate_up_proj
FUSED_QKV_GATE_UP = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class RowParallelLinear(LinearBase):
    """Each rank holds a slice of the inputs; partial outputs are summed across ranks."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__(divide(input_size, get_tp_size(), "input size"), output_size, bias, split_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the bias is added once, after the sum
        out = all_reduce(linear(x, self.weight, quantized=self.quantized))
        return out if self.bias is None else out + self.bias
