"""Block manager, detokenizer, stop strings and configuration, on their own."""

import random

import pytest
import torch
import torch.nn.functional as F

from nanovllm_core.config import EngineConfig
from nanovllm_core.detokenizer import IncrementalDetokenizer, StopStringMatcher
from nanovllm_core.engine.sequence import Sequence
from nanovllm_core.layers.linear import linear, padded_rows
from nanovllm_core.loader.source import ModelNotFoundError, resolve_model
from nanovllm_core.sampling_params import SamplingParams


def seq_of(tokens, request_id="r"):
    return Sequence(request_id, tokens, SamplingParams(), seed=0)


def test_detokenizer_never_emits_half_a_character(smollm2_tokenizer):
    text = "Café 🎉 naïve 日本語"
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, [], skip_special_tokens=True)
    pieces = [detokenizer.add([t]) for t in ids]
    pieces.append(detokenizer.flush())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert len(ids) > len(text.split())  # some characters really span tokens


def test_stop_string_never_leaks_even_partly():
    matcher = StopStringMatcher(["STOP"], include_stop_str_in_output=False)
    emitted = []
    for delta in ["Hello S", "T", "O", "P and more"]:
        out, hit = matcher.add(delta)
        emitted.append(out)
        if hit:
            break
    assert emitted == ["Hello ", "", "", ""] and hit == "STOP"


def test_held_back_text_is_released_when_no_stop_follows():
    matcher = StopStringMatcher(["STOP"], include_stop_str_in_output=False)
    assert matcher.add("ST") == ("", None)
    assert matcher.add("AR") == ("STAR", None)
    assert matcher.add("S") == ("", None)
    assert matcher.finish() == "S"


def test_stop_strings_match_like_a_search_of_the_whole_text():
    """The automata against str.find over all the text so far after each piece: random
    texts over a tiny alphabet (many overlaps), random pieces, several stop strings."""
    rng = random.Random(0)
    for _ in range(1000):
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        include = rng.random() < 0.5
        cuts = sorted(set(rng.sample(range(1, len(text) + 1), k=min(len(text), rng.randint(1, 8)))) | {len(text)})
        matcher = StopStringMatcher(stops, include)
        emitted, hit, expected, previous = "", None, None, 0
        for cut in cuts:
            out, hit = matcher.add(text[previous:cut])
            emitted += out
            previous = cut
            so_far = text[:cut]
            found = [(so_far.find(s), s) for s in stops if s in so_far]
            if found:
                start, stop = min(found)
                expected = (so_far[: start + (len(stop) if include else 0)], stop)
                break
        if hit is None:
            emitted += matcher.finish()
        assert (emitted, hit) == (expected or (text, None)), (stops, text, cuts)


def test_config_precedence(tmp_path, monkeypatch):
    config_file = tmp_path / "nanovllm.yaml"
    config_file.write_text("max_num_seqs: 7\nblock_size: 32\ndtype: fp32\n")
    monkeypatch.setenv("NANOVLLM_BLOCK_SIZE", "64")
    config = EngineConfig(config_file=str(config_file), seed=5)
    assert (config.max_num_seqs, config.block_size, config.dtype, config.seed) == (7, 64, "float32", 5)
    assert EngineConfig(config_file=str(config_file), block_size=8).block_size == 8
    toml_file = tmp_path / "nanovllm.toml"
    toml_file.write_text("max_num_seqs = 3\n")
    monkeypatch.setenv("NANOVLLM_CONFIG_FILE", str(toml_file))
    assert EngineConfig().max_num_seqs == 3


def test_config_rejects_unknown_and_invalid_settings(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_num_sequences: 7\n")
    with pytest.raises(ValueError, match="unknown settings"):
        EngineConfig(config_file=str(bad))
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineConfig(max_num_seqs=0)


def test_missing_models_fail_clearly(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        resolve_model(str(tmp_path / "absent"))
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"must be \.gguf"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_cpu_linear_pads_rows_to_few_sizes_and_computes_the_same():
    sizes = {padded_rows(rows) for rows in range(1, 4097)}
    assert len(sizes) <= 8 + 8 * 9  # exact up to 8, then eight per power of two
    assert all(rows <= padded_rows(rows) <= rows * 1.125 for rows in range(1, 4097))
    weight, bias = torch.randn(96, 64, dtype=torch.bfloat16), torch.randn(96, dtype=torch.bfloat16)
    for rows in (1, 7, 9, 37, 130):
        x = torch.randn(rows, 64, dtype=torch.bfloat16)
        out = linear(x, weight, bias)
        assert out.shape == (rows, 96)
        torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-2, atol=1e-2)


def test_logprob_bytes_are_the_tokens_own(smollm2_tokenizer):
    """Regression: bytes came from decoding one token, so a token holding part of a
    UTF-8 character reported U+FFFD's bytes."""
    from nanovllm_api.serving_chat import token_logprobs
    from nanovllm_core.detokenizer import TokenBytes
    from nanovllm_core.outputs import SampledToken

    text = "🎉 café 日本語\n"
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    entries = token_logprobs(smollm2_tokenizer, TokenBytes(smollm2_tokenizer), [SampledToken(t, -1.0) for t in ids])
    assert any(e.token == "\ufffd" for e in entries)  # pieces of a character, as the test means
    assert b"".join(bytes(e.bytes) for e in entries).decode() == text


def test_an_engine_still_loading_is_a_503_with_retry_after():
    """Every refusal that a retry can cure says when to retry, wherever it is raised."""
    from nanovllm_api.config import ServerConfig
    from nanovllm_api.errors import Unavailable
    from nanovllm_api.serving_context import ServingContext
    from nanovllm_core.engine_client import EngineUnavailable

    class LoadingEngine:
        @property
        def model_info(self):
            raise EngineUnavailable("The model is still loading; retry shortly.")

    ctx = ServingContext(config=ServerConfig(), engine=LoadingEngine(), metrics=None, model_names=["m"])
    with pytest.raises(Unavailable) as refused:
        ctx.check_prompt_chars(["hello"])
    response = refused.value.response()
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_sentence_transformers_pooling_is_read_and_unknown_modules_refused(tmp_path):
    import json

    from nanovllm_core.loader.sentence_transformers import read_pooler_config
    from nanovllm_core.pooling import PoolerConfig

    assert read_pooler_config(tmp_path) is None  # not a sentence-transformers checkpoint
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert read_pooler_config(tmp_path) == PoolerConfig("cls", normalize=False)
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    (tmp_path / "modules.json").write_text(json.dumps([*modules, dense]))
    with pytest.raises(ValueError, match=r"\['Dense'\] are not supported"):
        read_pooler_config(tmp_path)


def test_a_recorded_operator_graph_replays_with_new_inputs_and_constants_as_they_are_then():
    """The CPU decode graphs' recorder: tuple and list outputs, an in-place update of a tensor
    the function does not take (as a layer stores into the KV cache), and a constant read after
    it changed; the replay must compute what calling the function again computes."""
    from nanovllm_core.engine.decode_graphs import OperatorRecorder

    cache = torch.zeros(4)
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])

    def forward(x: torch.Tensor) -> torch.Tensor:
        low, high = x.split(2)
        top, index = torch.max(x * weight, dim=0)
        cache.add_(x)  # a mutation the caller sees only through `cache`
        return torch.cat([high, low]) + top * index + cache.sum()

    example = torch.tensor([1.0, -1.0, 2.0, 0.5])
    recorder = OperatorRecorder((example,))
    with recorder:
        expected = forward(example)
    graph = recorder.graph_module(expected)
    cache.zero_()
    torch.testing.assert_close(graph(example), expected)  # the same inputs and state: the same result
    weight[0] = 10.0  # constants are read at replay, as they are then
    fresh = torch.tensor([3.0, 0.0, -2.0, 1.0])
    replayed, before = graph(fresh), cache.clone()
    cache.copy_(before - fresh)  # undo the replay's update, then call the function itself
    torch.testing.assert_close(replayed, forward(fresh))
    torch.testing.assert_close(cache, before)


def test_recording_operators_does_not_import_torch_dynamo():
    """Regression: the recorder's first operator imported torch._dynamo (TorchDispatchMode's
    default wraps __torch_dispatch__ in torch._dynamo.disable), about 150 MB more in every server."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from nanovllm_core.engine.decode_graphs import OperatorRecorder\n"
        "x = torch.ones(3)\n"
        "recorder = OperatorRecorder((x,))\n"
        "with recorder:\n"
        "    y = x * 2\n"
        "assert recorder.graph_module(y)(x).tolist() == [2.0, 2.0, 2.0]\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
