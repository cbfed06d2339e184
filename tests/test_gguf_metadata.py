"""A GGUF file's config and tokenizer are converted once, into the cache, and read back the
same as transformers reads them from the file."""

import os

from nanovllm_core.loader.gguf_metadata import SETTINGS_FILE, cache_name, converted_gguf
from nanovllm_core.loader.source import resolve_model

TEXTS = ["Hello world!", " héllo  \t ünïcode 日本語 🙂", "<|im_start|>user\nhi<|im_end|>", "def f(x):\n    return x**2"]


def test_converted_once_then_read_back_as_from_the_file(tmp_path, monkeypatch, smollm2_path, smollm2_tokenizer):
    monkeypatch.setenv("NANOVLLM_CACHE_DIR", str(tmp_path))
    directory = converted_gguf(smollm2_path)
    written = (directory / "config.json").stat().st_mtime_ns
    assert converted_gguf(smollm2_path) == directory and (directory / "config.json").stat().st_mtime_ns == written
    assert os.listdir(tmp_path / "gguf") == [directory.name]  # no staging directory left behind
    source = resolve_model(str(smollm2_path))
    tokenizer = source.load_tokenizer()
    assert [tokenizer(t)["input_ids"] for t in TEXTS] == [smollm2_tokenizer(t)["input_ids"] for t in TEXTS]
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == \
        smollm2_tokenizer.apply_chat_template(messages, tokenize=False)
    config = source.load_config()
    assert (config.architectures, config.num_hidden_layers, config.vocab_size) == (["LlamaForCausalLM"], 30, 49152)
    assert source.quantization() == "int4" and (directory / SETTINGS_FILE).is_file()


def test_a_changed_file_is_converted_again(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"one")
    before = cache_name(model)
    model.write_bytes(b"other")
    assert cache_name(model) != before and before.startswith("model-")


def test_an_unwritable_cache_still_loads(tmp_path, monkeypatch, smollm2_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NANOVLLM_CACHE_DIR", str(blocker))
    assert resolve_model(str(smollm2_path)).load_config().num_hidden_layers == 30
    assert converted_gguf(smollm2_path) == converted_gguf(smollm2_path)  # converted once in this process
