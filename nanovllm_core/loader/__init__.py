from nanovllm_core.loader.source import ModelSource, resolve_model
from nanovllm_core.loader.weights import load_model_weights

__all__ = ["ModelSource", "load_model_weights", "resolve_model"]
