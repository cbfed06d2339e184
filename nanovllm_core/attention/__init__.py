from nanovllm_core.attention.backend import AttentionBackend, AttentionMetadata, get_forward_context, forward_context

__all__ = ["AttentionBackend", "AttentionMetadata", "forward_context", "get_forward_context"]
