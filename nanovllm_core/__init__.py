"""nanovllm's core: the engine, the hook specs and the plugin manager."""

from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.llm import LLM
from nanovllm_core.engine.llm_engine import LLMEngine, RequestOutput
from nanovllm_core.sampling_params import SamplingParams

__all__ = ["LLM", "EngineConfig", "LLMEngine", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"
