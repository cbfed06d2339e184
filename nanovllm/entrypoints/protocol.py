"""The request and response models, where the original nanovllm server kept them:
an alias of ``nanovllm_api.protocol``."""

from nanovllm_api.protocol import *  # noqa: F401,F403
