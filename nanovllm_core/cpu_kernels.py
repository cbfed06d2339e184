"""Build and load the C++ CPU kernels (csrc/) once per machine, on first use:
paged decode attention (the ``cpu`` attention backend) and the weight-only
int8 linear for a few rows (``--quantization int8``).

The build uses torch's own extension builder (ninja and a C++ compiler) and is
cached under torch's extensions directory, so only the first start on a
machine pays for it (about a minute on 2 cores). The code is compiled for the
CPU it runs on (``-march=native``); the cache name carries a hash of the CPU's
model and flags, so a home directory shared between different CPUs never loads
a build with instructions the CPU lacks.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("ops.cpp", "paged_decode.cpp", "int8_linear.cpp")]


def cpu_fingerprint() -> str:
    """A short hash of what the compiler's -march=native depends on."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = [platform.processor()]
    return hashlib.sha256("\n".join(lines + [platform.machine()]).encode()).hexdigest()[:12]


@functools.cache
def load() -> None:
    """Register ``torch.ops.nanovllm_cpu.*``, building them if needed; RuntimeError says why it could not."""
    from torch.utils import cpp_extension

    name = f"nanovllm_cpu_{cpu_fingerprint()}"
    logger.info("loading the CPU kernels (%s); the first start on a machine compiles them", name)
    try:
        cpp_extension.load(
            name=name,
            sources=[str(path) for path in SOURCES],
            extra_cflags=["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # a missing compiler or ninja surfaces as several exception types
        raise RuntimeError(f"could not build the CPU kernels ({type(error).__name__}: {error})") from error


def paged_decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           generic_only: bool = False) -> torch.Tensor:
    """Attention of one query token per sequence over its paged K/V, read in place.

    query ``[seqs, heads, head_dim]``; caches ``[kv_heads, blocks, block_size, head_dim]``;
    block_tables ``[seqs, width]`` and context_lens ``[seqs]`` int32. ``generic_only``
    runs the portable loops even where AVX-512 code exists (so tests check both).
    """
    load()
    return torch.ops.nanovllm_cpu.paged_decode_attention(
        query, k_cache, v_cache, block_tables, context_lens, scale, generic_only
    )


def int8_linear(x: torch.Tensor, values: torch.Tensor, scales: torch.Tensor, generic_only: bool = False) -> torch.Tensor:
    """``x @ (values * scales[:, None]).T`` for a few rows of ``x``; int8 ``values`` [out, in], one scale per output."""
    load()
    return torch.ops.nanovllm_cpu.int8_linear(x, values, scales, generic_only)
