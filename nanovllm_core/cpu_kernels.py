"""Build and load the C++ CPU kernels (csrc/) once per machine, on first use:
paged decode attention (the ``cpu`` attention backend), the weight-only int8
and int4 linears for a few rows (``--quantization int8|int4``), and the decoder's fused
elementwise steps (RMSNorm with its residual add, rotary embedding, SwiGLU),
which the layers use on CPU tensors once the model runner has loaded them.

The build uses torch's own extension builder (ninja and a C++ compiler) and is
cached under torch's extensions directory, so only the first start on a
machine pays for it (about 15 s on 2 cores). The code is compiled for the
CPU it runs on (``-march=native``); the cache name carries a hash of the CPU's
model and flags, so a home directory shared between different CPUs never loads
a build with instructions the CPU lacks. ``NANOVLLM_CPU_KERNELS=0`` turns them
off (pure PyTorch everywhere).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("ops.cpp", "paged_decode.cpp", "quantized_linear.cpp", "elementwise.cpp")]


def cpu_fingerprint() -> str:
    """A short hash of what the compiler's -march=native depends on."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = [platform.processor()]
    return hashlib.sha256("\n".join(lines + [platform.machine()]).encode()).hexdigest()[:12]


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), which makes
    bf16 matmuls fast; elsewhere they are emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


_outcome: RuntimeError | bool | None = None  # None: not tried yet; a failure is kept, not retried


def load() -> None:
    """Register ``torch.ops.nanovllm_cpu.*``, building them if needed; RuntimeError says why it could not."""
    global _outcome
    if _outcome is None:
        try:
            _build()
            _outcome = True
        except RuntimeError as error:
            _outcome = error
    if isinstance(_outcome, RuntimeError):
        raise _outcome


def loaded() -> bool:
    """Whether the kernels are registered (``load()`` succeeded)."""
    return _outcome is True


def _build() -> None:
    if os.environ.get("NANOVLLM_CPU_KERNELS") == "0":
        raise RuntimeError("the CPU kernels are turned off by NANOVLLM_CPU_KERNELS=0")
    from torch.utils import cpp_extension

    name = f"nanovllm_cpu_{cpu_fingerprint()}"
    logger.info("loading the CPU kernels (%s); the first time on a machine compiles them (seconds to a minute)", name)
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
                           sliding_window: int | None = None, generic_only: bool = False) -> torch.Tensor:
    """Attention of one query token per sequence over its paged K/V, read in place.

    query ``[seqs, heads, head_dim]``; caches ``[kv_heads, blocks, block_size, head_dim]``;
    block_tables ``[seqs, width]`` and context_lens ``[seqs]`` int32. With ``sliding_window``
    only the last that many keys are read. ``generic_only`` runs the portable loops even
    where vector code exists (so tests check both).
    """
    load()
    return torch.ops.nanovllm_cpu.paged_decode_attention(
        query, k_cache, v_cache, block_tables, context_lens, scale, sliding_window or 0, generic_only
    )


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write key/value ``[tokens, kv_heads, head_dim]`` into the head-major caches at
    ``slot_mapping`` (negative slots are skipped)."""
    load()
    torch.ops.nanovllm_cpu.store_kv(key, value, k_cache, v_cache, slot_mapping)


def quantized_linear_paths() -> list[str]:
    """The quantized linears' kernel paths this build has, best first (the default), by the
    names the C++ code gives them."""
    load()
    names = torch.ops.nanovllm_cpu.quantized_linear_path_names()
    return [names[number] for number in torch.ops.nanovllm_cpu.quantized_linear_paths()]


@functools.cache
def _best_path_number() -> int:
    return torch.ops.nanovllm_cpu.quantized_linear_paths()[0]


def _path_number(path: str | None) -> int:
    if path is None:  # every linear of every step asks: once is enough
        return _best_path_number()
    return torch.ops.nanovllm_cpu.quantized_linear_path_names().index(path)


def int8_linear(x: torch.Tensor, values: torch.Tensor, scales: torch.Tensor, path: str | None = None) -> torch.Tensor:
    """``x @ w.T``, ``w`` in blocks of 32 along the input (GGUF's Q8_0): ``values * scale``.

    int8 ``values`` [out, in]; float16 ``scales`` [out, in / 32]. ``path`` picks a kernel
    path of ``quantized_linear_paths()`` (tests run each); None, the best.
    """
    load()
    return torch.ops.nanovllm_cpu.int8_linear(x, values, scales, _path_number(path))


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                path: str | None = None) -> torch.Tensor:
    """``x @ w.T``, ``w`` in blocks of 32 along the input (GGUF's Q4_1): ``q * scale + min``.

    ``packed`` uint8 [out, in / 2] (byte i of a block: q[i] low nibble, q[i + 16] high);
    ``scales``/``mins`` float16 [out, in / 32]. ``path`` as for ``int8_linear``.
    """
    load()
    return torch.ops.nanovllm_cpu.int4_linear(x, packed, scales, mins, _path_number(path))


def int8_dequantize(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The weights of ``int8_linear`` as bfloat16 [out, in]."""
    return torch.ops.nanovllm_cpu.int8_dequantize(values, scales)


def int4_dequantize(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """The weights of ``int4_linear`` as bfloat16 [out, in]."""
    return torch.ops.nanovllm_cpu.int4_dequantize(packed, scales, mins)


def rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
             eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of ``x + residual`` (or of ``x``) times ``weight``, and the sum (None without residual)."""
    normed, total = torch.ops.nanovllm_cpu.rms_norm(x, residual, weight, eps)
    return normed, (total if residual is not None else None)


def rotary_embedding(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary embedding of ``query`` and ``key`` [tokens, heads, head_dim] (any
    token and head strides) into new tensors; float32 ``cos``/``sin`` [positions, head_dim / 2]."""
    return torch.ops.nanovllm_cpu.rotary_embedding(query, key, positions, cos, sin)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a fused ``[gate | up]`` last dimension."""
    return torch.ops.nanovllm_cpu.silu_and_mul(x)


def main() -> None:
    """``python -m nanovllm_core.cpu_kernels``: build the kernels now (``make install`` does),
    so that the first server start does not; a machine that cannot build them is told why."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        load()
        logger.info("CPU kernels ready")
    except RuntimeError as error:
        logger.warning("%s; nanovllm will run the CPU path in plain PyTorch (slower)", error)


if __name__ == "__main__":
    main()
