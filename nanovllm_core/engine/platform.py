"""Where and how the model runs: the device, the dtype, the attention backend, the weights' precision."""

from __future__ import annotations

import logging

import torch

from nanovllm_core import cpu_kernels, plugins
from nanovllm_core.attention import AttentionBackend
from nanovllm_core.config import EngineConfig
from nanovllm_core.loader import ModelSource

logger = logging.getLogger(__name__)

# preference order of `auto`; the first one installed and usable wins
CUDA_BACKEND_PREFERENCE = ("flash-attn", "triton", "torch")
CPU_BACKEND_PREFERENCE = ("cpu", "torch")  # torch when the C++ kernels cannot be built


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(name)


def load_cpu_kernels() -> None:
    """Build/load the C++ CPU kernels, which the layers then use; PyTorch ops if they cannot be built."""
    try:
        cpu_kernels.load()
    except RuntimeError as error:
        logger.warning("running the CPU path in plain PyTorch, which is slower: %s", error)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_kernels.cpu_has_bf16() else torch.float32


def select_attention_backend(name: str, device: torch.device, block_size: int = 16,
                             dtype: torch.dtype = torch.float32) -> type[AttentionBackend]:
    """The backend ``name`` if it can run here (else RuntimeError saying how to fix it); ``auto``:
    the first of the preference order that is installed and can run this block size and dtype."""
    registry = plugins.attention_backends()
    if name != "auto":
        backend = registry.get(name)
        backend.check_available(device)
        backend.check_config(block_size, dtype)
        return backend
    for candidate in CUDA_BACKEND_PREFERENCE if device.type == "cuda" else CPU_BACKEND_PREFERENCE:
        if candidate not in registry:
            continue
        backend = registry.get(candidate)
        try:
            backend.check_available(device)
            backend.check_config(block_size, dtype)
        except RuntimeError as error:
            logger.info("attention backend %s skipped: %s", candidate, error)
            continue
        return backend
    raise RuntimeError(registry.describe_missing("auto"))


def resolve_quantization(config: EngineConfig, source: ModelSource, device: torch.device, dtype: torch.dtype) -> str:
    """--quantization, with auto resolved: the GGUF file's own precision on CPU where the kernels built."""
    method = config.quantization
    if method != "auto":
        if method != "none" and device.type != "cpu":
            raise ValueError(f"quantization {method!r} runs on the CPU only")
        return method
    if device.type != "cpu" or config.load_format == "dummy":
        return "none"
    native = source.quantization()
    if native != "none" and not cpu_kernels.loaded():
        logger.warning("the GGUF file is %s, but without the CPU kernels it runs unquantized in %s", native, dtype)
        return "none"
    return native
