"""Decode steps replayed from graphs, one graph per padded batch size.

A decode step of a small model is mostly overhead around the kernels: launches
on a GPU, Python (module calls, attribute lookups, argument checks) on a CPU.
A graph replays the whole forward pass without it: a CUDA graph launches all
the kernels at once; on a CPU, the operators one forward pass called, recorded
into an FX graph, run as straight-line code. Each graph reads its inputs from
static buffers; a batch of n sequences runs in the smallest captured size >= n,
the extra rows padded with slot -1 (nothing is stored) and context length 0
(nothing is read).

Replaying is only right if the decode forward pass depends on nothing but its
input tensors and the batch size: attention backends say so with
``supports_cuda_graphs`` / ``supports_cpu_graphs``.
"""

from __future__ import annotations

import logging
import operator
import time

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from nanovllm_core.attention import AttentionMetadata, forward_context

logger = logging.getLogger(__name__)

CUDA_BATCH_SIZES = (1, 2, 4, 8, *range(16, 513, 16))
# On a CPU the Python a graph saves is a large share of a step of a few sequences and a
# small one beyond 8 (docs/benchmarks.md).
CPU_BATCH_SIZES = (1, 2, 4, 8)


class DecodeGraphRunner:
    """Static input buffers and the dispatch of a decode batch to its graph; subclasses capture and replay."""

    def __init__(self, model: nn.Module, sizes: list[int], max_blocks_per_seq: int, block_size: int,
                 device: torch.device):
        self.model = model
        self.sizes = sizes
        self.max_blocks_per_seq = max_blocks_per_seq
        self.max_context_len = max_blocks_per_seq * block_size  # in tokens, as the metadata counts it
        largest = self.sizes[-1]
        self.input_ids = torch.zeros(largest, dtype=torch.int64, device=device)
        self.positions = torch.zeros(largest, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((largest,), -1, dtype=torch.int64, device=device)
        self.context_lens = torch.zeros(largest, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(largest, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(largest + 1, dtype=torch.int32, device=device)

    def _metadata(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_decode_tokens=size,
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            context_lens=self.context_lens[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            max_query_len=1,
            max_context_len=self.max_context_len,
            query_lens_host=[1] * size,
            context_lens_host=[0] * size,  # not read by graph-capable backends on decodes
        )

    def _replay(self, size: int) -> torch.Tensor:
        """The hidden states of a batch of ``size`` rows, from the buffers."""
        raise NotImplementedError

    def can_run(self, num_seqs: int, num_decodes: int, block_table_width: int) -> bool:
        return num_decodes == num_seqs <= self.sizes[-1] and block_table_width <= self.max_blocks_per_seq

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        count = input_ids.shape[0]
        size = next(s for s in self.sizes if s >= count)
        self.input_ids[:count] = input_ids
        self.positions[:count] = positions
        self.slot_mapping[:count] = metadata.slot_mapping
        self.slot_mapping[count:size] = -1
        self.context_lens[:count] = metadata.context_lens
        self.context_lens[count:size] = 0
        width = metadata.block_tables.shape[1]
        self.block_tables[:count, :width] = metadata.block_tables
        return self._replay(size)[:count]


class CudaGraphRunner(DecodeGraphRunner):
    """Every size captured at start, the largest first, so that the others fit in its memory pool."""

    def __init__(self, model: nn.Module, max_batch_size: int, max_blocks_per_seq: int, block_size: int,
                 device: torch.device):
        super().__init__(model, [size for size in CUDA_BATCH_SIZES if size <= max_batch_size], max_blocks_per_seq,
                         block_size, device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            self._capture()
        logger.info("captured CUDA graphs for decode batch sizes %s", self.sizes)

    def _capture(self) -> None:
        pool = None
        for size in reversed(self.sizes):
            with forward_context(self._metadata(size)):
                self.model(self.input_ids[:size], self.positions[:size])  # warm-up: autotuning, allocations
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool):
                    self.outputs[size] = self.model(self.input_ids[:size], self.positions[:size])
            pool = graph.pool() if pool is None else pool
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def _replay(self, size: int) -> torch.Tensor:
        self.graphs[size].replay()
        return self.outputs[size]


class CpuGraphRunner(DecodeGraphRunner):
    """Each size recorded the first time a batch needs it, so that an engine, a test's among
    them, pays only for the sizes it uses; a recording costs about one forward pass."""

    def __init__(self, model: nn.Module, max_batch_size: int, max_blocks_per_seq: int, block_size: int,
                 device: torch.device):
        super().__init__(model, [size for size in CPU_BATCH_SIZES if size <= max_batch_size], max_blocks_per_seq,
                         block_size, device)
        self.graphs: dict[int, torch.fx.GraphModule] = {}

    def _replay(self, size: int) -> torch.Tensor:
        if size not in self.graphs:
            self.graphs[size] = self._record(size)
        return self.graphs[size](self.input_ids[:size], self.positions[:size])

    def _record(self, size: int) -> torch.fx.GraphModule:
        started = time.perf_counter()
        inputs = (self.input_ids[:size], self.positions[:size])
        recorder = OperatorRecorder(inputs)
        with forward_context(self._metadata(size)), recorder:
            hidden_states = self.model(*inputs)
        graph = recorder.graph_module(hidden_states)
        logger.info("recorded the CPU decode graph for batch size %d (%d operators) in %.2f s", size,
                    len(graph.graph.nodes), time.perf_counter() - started)
        return graph


class OperatorRecorder(TorchDispatchMode):
    """Records the operators a function calls, as they reach the dispatcher, into an FX
    graph whose placeholders are ``inputs``; every other tensor an operator reads (a weight,
    the KV cache, a buffer) becomes a constant that refers to that tensor. Python values
    the function computed on the way (shapes, branches taken) are fixed as recorded.
    (make_fx records the same graph, but slowly: docs/architecture.md says why not it.)"""

    def __init__(self, inputs: tuple[torch.Tensor, ...]):
        super().__init__()
        self.graph = torch.fx.Graph()
        self.constants: dict[str, torch.Tensor] = {}
        self._nodes: dict[int, torch.fx.Node] = {}
        self._seen: list[torch.Tensor] = []  # kept alive, so that no other tensor takes a recorded id
        for index, tensor in enumerate(inputs):
            self._bind(tensor, self.graph.placeholder(f"input_{index}"))

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # True, the default, wraps __torch_dispatch__ in torch._dynamo.disable, whose import on
        # the first operator adds about 150 MB to the process; nothing here is ever compiled
        return False

    def _bind(self, tensor: torch.Tensor, node: torch.fx.Node) -> None:
        self._nodes[id(tensor)] = node
        self._seen.append(tensor)

    def _node(self, value):
        if not isinstance(value, torch.Tensor):
            return value
        node = self._nodes.get(id(value))
        if node is None:
            name = f"constant_{len(self.constants)}"
            self.constants[name] = value
            node = self.graph.get_attr(name)
            self._bind(value, node)
        return node

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        node_args, node_kwargs = pytree.tree_map(self._node, (args, kwargs))
        node = self.graph.call_function(func, node_args, node_kwargs)
        if isinstance(out, torch.Tensor):
            self._bind(out, node)
        elif isinstance(out, (tuple, list)):
            for index, item in enumerate(out):
                if isinstance(item, torch.Tensor):
                    self._bind(item, self.graph.call_function(operator.getitem, (node, index)))
        return out

    def graph_module(self, output: torch.Tensor) -> torch.fx.GraphModule:
        self.graph.output(self._node(output))
        return torch.fx.GraphModule(self.constants, self.graph)
