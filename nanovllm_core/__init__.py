"""nanovllm's core: the engine, the hook specs and the plugin manager.

``LLM``, ``LLMEngine`` and the rest are imported on first use, so a plugin that
imports a contract (``nanovllm_core.sampling``, ``.sampling_params``, ...) does
not load the engine with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nanovllm_core.config import EngineConfig
    from nanovllm_core.engine.llm import LLM
    from nanovllm_core.engine.llm_engine import LLMEngine
    from nanovllm_core.outputs import RequestOutput
    from nanovllm_core.sampling_params import SamplingParams

_EXPORTS = {
    "LLM": "nanovllm_core.engine.llm",
    "EngineConfig": "nanovllm_core.config",
    "LLMEngine": "nanovllm_core.engine.llm_engine",
    "RequestOutput": "nanovllm_core.outputs",
    "SamplingParams": "nanovllm_core.sampling_params",
}
__all__ = ["LLM", "EngineConfig", "LLMEngine", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nanovllm_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
