import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every engine and server a test starts runs on the CPU unless it asks for a GPU (the GPU-marked
# tests do, with a small KV budget): on a GPU machine `auto` would give each 90 % of the GPU.
os.environ.setdefault("NANOVLLM_DEVICE", "cpu")
if not torch.cuda.is_available():
    # Triton kernels run in its interpreter on the CPU; set before triton compiles anything
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smollm2_path():
    from nanovllm_core.loader.source import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def word_tokenizer():
    """49,152 words (w0 ... w49151), built here: a tokenizer for random-weight checkpoints whose
    tests read token ids only, with no model package (the GPU suite's machine has no SmolLM2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(49152)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0", eos_token="w1", pad_token="w0")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)


@pytest.fixture(scope="session")
def smollm2_llm(smollm2_path):
    """SmolLM2 in float32, shared by the tests that only read from it."""
    from nanovllm_core import LLM

    return LLM(str(smollm2_path), dtype="float32", quantization="none")


@pytest.fixture(scope="session")
def structured_server(tmp_path_factory):
    """The server the structured-output and tool-calling tests share."""
    from server_process import FLOAT32_UNQUANTIZED, serve

    yield from serve(tmp_path_factory, "structured", *FLOAT32_UNQUANTIZED, "--max-num-seqs", "16")


def chat_prompt(tokenizer, message: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
    )


CHAT_MESSAGES = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 2+2?",
    "Name three colours.",
    "Explain gravity in one sentence.",
    "Give me a synonym for happy.",
]
