"""Plugins add model architectures and samplers that the engine then uses end to end."""

import subprocess
import sys

import openai
import pytest
import torch

from nanovllm_core import LLM, SamplingParams, plugins
from nanovllm_core.hookspecs import hookimpl
from nanovllm_core.model_class import ModelTraits
from nanovllm_core.registry import UnknownImplementationError
from nanovllm_core.sampling import SamplerOutput
from nanovllm_core.testing import registered_plugin
from nanovllm_qwen3.decoder import Qwen3ForCausalLM
from server_process import ServerProcess
from tiny_models import make_tiny_checkpoint

FAVOURITE_TOKEN = 4242


class EchoArchitecture(Qwen3ForCausalLM):
    """A 'new' architecture: Qwen3 whose registry name the checkpoint asks for."""

    instances = 0

    def __init__(self, config):
        super().__init__(config)
        EchoArchitecture.instances += 1


class AlwaysFavouriteSampler:
    def __call__(self, logits, batch):
        return SamplerOutput(torch.full((logits.shape[0],), FAVOURITE_TOKEN, dtype=torch.int64))


class ThirdPartyPlugin:
    @hookimpl
    def register_model_architectures(self, register):
        register("EchoForCausalLM", EchoArchitecture)

    @hookimpl
    def register_samplers(self, register):
        register("favourite", AlwaysFavouriteSampler)


@pytest.fixture(scope="module")
def echo_checkpoint(tmp_path_factory, smollm2_tokenizer):
    path = make_tiny_checkpoint("Qwen3ForCausalLM", tmp_path_factory.mktemp("echo"), smollm2_tokenizer)
    config_file = path / "config.json"
    config_file.write_text(config_file.read_text().replace('"Qwen3ForCausalLM"', '"EchoForCausalLM"'))
    return path


def test_plugin_architecture_and_sampler_run_end_to_end(echo_checkpoint):
    with registered_plugin(ThirdPartyPlugin(), name="third-party"):
        llm = LLM(str(echo_checkpoint), dtype="float32", sampler="favourite")
        out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    assert EchoArchitecture.instances == 1
    assert out[0]["token_ids"] == [FAVOURITE_TOKEN] * 3
    assert "favourite" not in plugins.samplers()  # unregistered afterwards


class MisspeltArchitecture(Qwen3ForCausalLM):
    """A plugin author's typo: ``stop_token`` where the contract reads ``stop_tokens``."""

    stop_token = ("<|im_end|>",)


class MisspeltPlugin:
    @hookimpl
    def register_model_architectures(self, register):
        register("EchoForCausalLM", MisspeltArchitecture)


def test_a_model_class_member_that_nearly_names_the_contract_is_refused(echo_checkpoint):
    """Regression: eight getattr calls read the optional members, so a misspelt one was
    ignored without a word (the model then never stopped at its end-of-turn token)."""
    traits = ModelTraits.of(Qwen3ForCausalLM)
    assert traits.can_generate and traits.packed_modules_mapping and traits.stop_tokens == ()
    with pytest.raises(TypeError, match=r"'stop_token'.*did you mean 'stop_tokens'"):
        ModelTraits.of(MisspeltArchitecture)
    with registered_plugin(MisspeltPlugin()), pytest.raises(TypeError, match="did you mean 'stop_tokens'"):
        LLM(str(echo_checkpoint), dtype="float32")
    with pytest.raises(TypeError, match=r"no forward\(input_ids, positions\)"):
        ModelTraits.of(type("NoForward", (), {}))


def test_registries_name_the_distribution_that_provides_each_entry():
    providers = {e.name: e.provider for e in plugins.model_architectures().entries()}
    assert providers["Qwen3ForCausalLM"] == "nanovllm-qwen3"
    assert providers["LlamaForCausalLM"] == "nanovllm-qwen3"
    assert {e.name: e.provider for e in plugins.samplers().entries()}["default"] == "nanovllm-sampling"
    assert {e.name: e.provider for e in plugins.attention_backends().entries()}["torch"] == "nanovllm (built-in)"
    with registered_plugin(ThirdPartyPlugin(), name="third-party"):
        assert {e.name: e.provider for e in plugins.samplers().entries()}["favourite"] == "third-party"


def test_unknown_names_list_what_is_installed(echo_checkpoint):
    with pytest.raises(UnknownImplementationError) as error:
        plugins.attention_backends().get("warp-drive")
    assert "Unknown attention backend 'warp-drive'" in str(error.value)
    assert "torch (from nanovllm (built-in))" in str(error.value)
    with pytest.raises(UnknownImplementationError, match=r"Unknown model architecture 'EchoForCausalLM'.*Qwen3ForCausalLM \(from nanovllm-qwen3\)"):
        LLM(str(echo_checkpoint), dtype="float32")
    with pytest.raises(UnknownImplementationError, match="Unknown sampler 'nope'.*default"):
        plugins.samplers().get("nope")


def test_plugin_loading_can_be_restricted(monkeypatch):
    from nanovllm_core.plugins import get_plugin_manager

    get_plugin_manager.cache_clear()
    monkeypatch.setenv("NANOVLLM_LOAD_PLUGINS", "sampling")
    try:
        assert plugins.samplers().names() == ["default"]
        assert plugins.model_architectures().names() == []
        assert plugins.attention_backends().names() == ["cpu", "flash-attn", "torch", "triton"]  # built-ins always load
    finally:
        get_plugin_manager.cache_clear()


def test_lazy_targets_are_imported_only_when_chosen():
    entry = next(e for e in plugins.model_architectures().entries() if e.name == "Qwen2ForCausalLM")
    assert entry.target == "nanovllm_qwen3.decoder:Qwen2ForCausalLM"
    assert entry.load().__name__ == "Qwen2ForCausalLM"


def test_the_example_plugin_package_serves_through_the_server(tmp_path):
    """examples/plugin-top-n-sigma, installed as a separate distribution (make install),
    found through its entry point and used by a real server."""
    listing = subprocess.run([sys.executable, "-m", "nanovllm_api", "--list-plugins"], capture_output=True, text=True,
                             check=True).stdout
    assert any(line.split() == ["top-n-sigma", "nanovllm-top-n-sigma"] for line in listing.splitlines())
    server = ServerProcess("--sampler", "top-n-sigma", "--max-num-seqs", "2", "--max-model-len", "512",
                           log_path=tmp_path / "server.log")
    try:
        server.wait_healthy()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        body = dict(model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Name a colour."}],
                    max_tokens=16, temperature=1.5, seed=7)
        first, again = (client.chat.completions.create(**body).choices[0].message.content for _ in range(2))
        assert first and first == again
    finally:
        assert server.stop() == 0
