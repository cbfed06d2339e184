"""For nano-vllm users: `from nanovllm import LLM, SamplingParams` works unchanged."""

from nanovllm_core import LLM, SamplingParams

__all__ = ["LLM", "SamplingParams"]
