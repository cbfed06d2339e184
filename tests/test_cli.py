"""The command line: flags, precedence over environment and config file, plugin listing."""

import subprocess
import sys

import pytest

from nanovllm_api.cli import build_parser
from nanovllm_api.config import ServerConfig


def _config(argv):
    args = vars(build_parser().parse_args(argv))
    args.pop("list_plugins")
    return ServerConfig(**args)


def test_cli_beats_env_beats_file_beats_defaults(tmp_path, monkeypatch):
    config_file = tmp_path / "deploy.yaml"
    config_file.write_text("port: 9001\nmax_num_seqs: 8\nmax_model_len: 1024\nserved_model_name: [smol, tiny]\n")
    monkeypatch.setenv("NANOVLLM_MAX_NUM_SEQS", "16")
    config = _config(["--config", str(config_file), "--max-model-len", "2048", "--no-enable-prefix-caching"])
    assert config.port == 9001  # file
    assert config.max_num_seqs == 16  # env beats file
    assert config.max_model_len == 2048  # CLI beats file
    assert config.served_model_name == ["smol", "tiny"]
    assert config.enable_prefix_caching is False
    assert config.host == "127.0.0.1" and config.tensor_parallel_size == 1  # defaults


def test_help_explains_every_flag():
    help_text = " ".join(build_parser().format_help().split())
    for flag in ("--model", "--host", "--port", "--max-num-seqs", "--max-model-len", "--tensor-parallel-size",
                 "--attention-backend", "--dtype", "--device", "--served-model-name", "--chat-template",
                 "--api-key", "--config", "--log-level", "--list-plugins"):
        assert flag in help_text
    assert "(default: 8000)" in help_text


def test_list_plugins_names_each_provider():
    out = subprocess.run([sys.executable, "-m", "nanovllm_api", "--list-plugins"], capture_output=True, text=True, check=True).stdout
    assert "Qwen3ForCausalLM" in out and "nanovllm-qwen3" in out
    assert "torch" in out and "nanovllm (built-in)" in out
    assert "default" in out and "nanovllm-sampling" in out
    assert "grammar backends:\n  xgrammar" in out
    assert "tool-call parsers:\n  hermes" in out and "  smollm2" in out
    assert "reasoning parsers:\n  deepseek_r1" in out and "  qwen3 " in out
    assert "poolers:\n  cls" in out and "  last " in out and "  mean " in out
    assert "BertModel" in out and "nanovllm-bert" in out


def test_bad_settings_exit_with_a_message():
    result = subprocess.run([sys.executable, "-m", "nanovllm_api", "--max-num-seqs", "0"], capture_output=True, text=True)
    assert result.returncode != 0 and "max_num_seqs" in result.stderr
    result = subprocess.run([sys.executable, "-m", "nanovllm_api", "--tool-call-parser", "nope"], capture_output=True, text=True)
    assert result.returncode != 0 and "Unknown tool-call parser 'nope'. Installed: hermes" in result.stderr
    assert "Traceback" not in result.stderr


def test_only_the_original_entry_point_accepts_any_model_name():
    """nanovllm-api keeps vLLM's 404 for unknown names (tests/test_api.py); the original
    server's entry point answers any name, as that server did."""
    from nanovllm.entrypoints.api_server import CompatServerConfig

    assert _config([]).accept_any_model_name is False
    assert CompatServerConfig().accept_any_model_name is True
    assert _config(["--accept-any-model-name"]).accept_any_model_name is True


def test_nano_vllm_aliases():
    import nanovllm
    from nanovllm_core import LLM, SamplingParams

    assert nanovllm.LLM is LLM and nanovllm.SamplingParams is SamplingParams
    out = subprocess.run([sys.executable, "-m", "nanovllm.entrypoints.api_server", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--tensor-parallel-size" in out


def test_a_step_budget_below_max_num_seqs_is_refused():
    """Regression: accepted, and the tail of the running batch never got a token."""
    with pytest.raises(ValueError, match=r"max_num_batched_tokens \(32\) must be at least max_num_seqs \(64\)"):
        _config(["--max-num-seqs", "64", "--max-num-batched-tokens", "32"])
    assert _config(["--max-num-batched-tokens", "32"]).max_num_seqs == 32  # the default ceiling follows


def test_dtype_aliases_on_the_command_line():
    """Regression: the config accepted half/fp16/bf16, the flag refused them."""
    assert _config(["--dtype", "half"]).dtype == "float16"
    assert _config(["--dtype", "bf16"]).dtype == "bfloat16"
    assert _config(["--dtype", "fp16"]).dtype == "float16"
