"""Llama 3 GGUF files: llama.cpp stores RoPE scaling as a ``rope_freqs`` tensor, which
must reach the rotary layer. A tiny Llama with llama3 rope_scaling is written both as
an HF checkpoint and as a GGUF file (as llama.cpp's converter writes it), and both
give transformers' logits for the HF checkpoint."""

import math

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from nanovllm_core import LLM, SamplingParams
from nanovllm_core.testing import LogitsRecorder, LogitsRecorderPlugin, registered_plugin, save_random_checkpoint
from tiny_models import COMMON

VOCAB = 512
SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 64}
THETA = 10000.0
STEPS = 8


def llama_cpp_rope_freqs(head_dim: int) -> np.ndarray:
    """The divisor per frequency, as llama.cpp's converter computes it from rope_scaling."""
    factors = []
    low_wavelen = SCALING["original_max_position_embeddings"] / SCALING["low_freq_factor"]
    high_wavelen = SCALING["original_max_position_embeddings"] / SCALING["high_freq_factor"]
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * THETA ** (i / head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(SCALING["factor"])
        else:
            smooth = (SCALING["original_max_position_embeddings"] / wavelen - SCALING["low_freq_factor"]) / (
                SCALING["high_freq_factor"] - SCALING["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / SCALING["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


def permute_for_llama_cpp(weight: np.ndarray, heads: int) -> np.ndarray:
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(config: LlamaConfig, checkpoint, path) -> None:
    head_dim = config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(THETA)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(VOCAB)
    writer.add_tensor("rope_freqs.weight", llama_cpp_rope_freqs(head_dim))
    hf = {name: tensor.numpy() for name, tensor in load_file(checkpoint / "model.safetensors").items()}
    writer.add_tensor("token_embd.weight", hf["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", hf["model.norm.weight"])
    writer.add_tensor("output.weight", hf["lm_head.weight"])
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        for hf_part, gguf_part in parts.items():
            weight = hf[f"model.layers.{layer}.{hf_part}.weight"]
            if gguf_part in ("attn_q", "attn_k"):
                weight = permute_for_llama_cpp(weight, config.num_attention_heads if gguf_part == "attn_q"
                                               else config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_part}.weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama3-rope")
    config = LlamaConfig(**COMMON, vocab_size=VOCAB, rope_theta=THETA, rope_scaling=SCALING)
    hf_dir = save_random_checkpoint(config, directory / "hf")
    gguf_path = directory / "tiny-llama3.gguf"
    write_gguf(config, hf_dir, gguf_path)
    return hf_dir, gguf_path


def our_logits(model: str, prompt: list[int]) -> torch.Tensor:
    LogitsRecorder.records.clear()
    with registered_plugin(LogitsRecorderPlugin()):
        llm = LLM(model, dtype="float32", sampler="record-logits", skip_tokenizer_init=True, attention_backend="torch")
        llm.generate([prompt], SamplingParams(max_tokens=STEPS, ignore_eos=True, seed=0), use_tqdm=False)
    return torch.stack(LogitsRecorder.records[0])


@torch.no_grad()
def reference_logits(hf_dir, prompt: list[int]) -> torch.Tensor:
    """Greedy steps of transformers' full forward pass (its generate() drifts on long prompts here)."""
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    ids, rows = list(prompt), []
    for _ in range(STEPS):
        rows.append(model(torch.tensor([ids])).logits[0, -1])
        ids.append(int(rows[-1].argmax()))
    return torch.stack(rows)


def test_rope_freqs_of_a_gguf_reach_the_rotary_layer(checkpoints):
    """Regression: Llama 3 GGUF files failed to load (rope_freqs.weight had no mapping)."""
    hf_dir, gguf_path = checkpoints
    prompt = torch.randint(0, VOCAB, (200,), generator=torch.Generator().manual_seed(0)).tolist()  # past 64
    expected = reference_logits(hf_dir, prompt)
    torch.testing.assert_close(our_logits(str(hf_dir), prompt), expected, atol=2e-4, rtol=0)  # rope_scaling
    torch.testing.assert_close(our_logits(str(gguf_path), prompt), expected, atol=2e-4, rtol=0)  # rope_freqs
