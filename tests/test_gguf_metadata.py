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


def test_weights_load_from_the_cached_table_as_gguf_reads_them(smollm2_path, monkeypatch):
    """Loading locates each tensor from the cached table, without gguf's reader (which parses
    every vocabulary entry first), and reads exactly what the reader gives."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    from nanovllm_core.loader.gguf_metadata import gguf_settings
    from nanovllm_core.loader.gguf_weights import gguf_weights, hf_name

    source = resolve_model(str(smollm2_path))
    config, table = source.load_config(), gguf_settings(smollm2_path)["tensors"]
    expected = {hf_name(t.name): dequantize(t.data, t.tensor_type) for t in gguf.GGUFReader(smollm2_path).tensors}

    def no_reader(*args, **kwargs):
        raise AssertionError("GGUFReader used after conversion")

    monkeypatch.setattr(gguf.GGUFReader, "__init__", no_reader)
    config.model_type = "not-llama"  # compare the tensors as stored (llama's q/k rows are reordered on load)
    total, weights = gguf_weights(smollm2_path, table, config)
    loaded = dict(weights)
    assert total == len(loaded) == len(expected) == 272
    for name, tensor in loaded.items():
        assert np.array_equal(tensor.numpy(), expected[name]), name
