"""Tensors of a GGUF file, dequantized and renamed to Hugging Face names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from nanovllm_core.model_class import ModelTraits

# GGUF name (with N for the layer) -> HF name
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.N.attn_norm.weight": "model.layers.N.input_layernorm.weight",
    "blk.N.ffn_norm.weight": "model.layers.N.post_attention_layernorm.weight",
    "blk.N.attn_q.weight": "model.layers.N.self_attn.q_proj.weight",
    "blk.N.attn_k.weight": "model.layers.N.self_attn.k_proj.weight",
    "blk.N.attn_v.weight": "model.layers.N.self_attn.v_proj.weight",
    "blk.N.attn_q.bias": "model.layers.N.self_attn.q_proj.bias",
    "blk.N.attn_k.bias": "model.layers.N.self_attn.k_proj.bias",
    "blk.N.attn_v.bias": "model.layers.N.self_attn.v_proj.bias",
    "blk.N.attn_output.weight": "model.layers.N.self_attn.o_proj.weight",
    "blk.N.attn_q_norm.weight": "model.layers.N.self_attn.q_norm.weight",
    "blk.N.attn_k_norm.weight": "model.layers.N.self_attn.k_norm.weight",
    "blk.N.ffn_gate.weight": "model.layers.N.mlp.gate_proj.weight",
    "blk.N.ffn_up.weight": "model.layers.N.mlp.up_proj.weight",
    "blk.N.ffn_down.weight": "model.layers.N.mlp.down_proj.weight",
}
LAYER_NUMBER = re.compile(r"^blk\.(\d+)\.")
# not weights: read into the model's config by ``gguf_config_extras``
CONFIG_TENSORS = {"rope_freqs.weight"}


def hf_name(gguf_name: str, names: dict[str, str] = GGUF_TO_HF) -> str:
    match = LAYER_NUMBER.match(gguf_name)
    key = LAYER_NUMBER.sub("blk.N.", gguf_name) if match else gguf_name
    if key not in names:
        raise ValueError(f"GGUF tensor {gguf_name!r} is not supported")
    name = names[key]
    return name.replace(".N.", f".{match.group(1)}.") if match else name


def unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's converter, which reorders each head's q/k rows from
    Hugging Face's rotate-half layout to interleaved pairs."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_config_extras(reader: GGUFReader) -> dict:
    """Config settings a GGUF file carries as tensors: Llama 3's per-frequency RoPE
    divisors (``rope_freqs``), which transformers' GGUF reader leaves out."""
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            return {"rope_freq_factors": dequantize(tensor.data, tensor.tensor_type).astype(np.float32).tolist()}
    return {}


# what the CPU computes a linear weight of each GGUF type as (--quantization auto):
# 2-4 bits as int4, 5-8 bits as int8; float types stay in the model's dtype
INT4_TYPES = {"Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "IQ4_NL", "IQ4_XS"}
INT8_TYPES = {"Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "Q8_K"}


def gguf_quantization(reader: GGUFReader) -> str:
    """``int4``, ``int8`` or ``none``: what most of the file's layer weights are quantized
    to (by element count), which ``--quantization auto`` runs them as."""
    counts = {"int4": 0, "int8": 0, "none": 0}
    for tensor in reader.tensors:
        if tensor.name.startswith("blk.") and tensor.name.endswith(".weight") and len(tensor.shape) == 2:
            kind = tensor.tensor_type.name
            counts["int4" if kind in INT4_TYPES else "int8" if kind in INT8_TYPES else "none"] += int(tensor.n_elements)
    return max(counts, key=counts.get)


def gguf_tensor_table(reader: GGUFReader) -> list[dict]:
    """Where each weight lies in the file and how to read it, so that loading needs no
    GGUFReader (which parses all the metadata first): name, GGML type, the numpy dtype
    and shape of its raw data, and its byte offset."""
    return [{"name": t.name, "type": int(t.tensor_type), "dtype": t.data.dtype.str, "shape": list(t.data.shape),
             "offset": int(t.data_offset)}
            for t in reader.tensors if t.name not in CONFIG_TENSORS]


def gguf_weights(path: Path, table: list[dict], config,
                 traits: ModelTraits | None = None) -> tuple[int, Iterator[tuple[str, torch.Tensor]]]:
    """The number of tensors in ``table`` (``gguf_tensor_table``), and an iterator over them
    in Hugging Face's names and conventions.

    Where llama.cpp's converter departs from its Llama conventions for an architecture,
    the model class says how to undo it (its ``traits``): ``gguf_tensor_names`` adds or overrides entries
    of ``GGUF_TO_HF`` (same ``blk.N.`` form), and ``from_gguf(hf_name, tensor)`` returns a
    tensor as the Hugging Face checkpoint holds it (Gemma's norms are stored as 1 + w)."""
    names = {**GGUF_TO_HF, **(traits.gguf_tensor_names if traits else {})}
    return len(table), _iterate(np.memmap(path, mode="r"), table, config, names, traits.from_gguf if traits else None)


def _iterate(file: np.memmap, table: list[dict], config, names: dict[str, str],
             convert) -> Iterator[tuple[str, torch.Tensor]]:
    # llama.cpp permutes q/k for the Llama architecture only
    permute = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    needs_unpermute = config.model_type == "llama"
    for entry in table:
        dtype, shape = np.dtype(entry["dtype"]), entry["shape"]
        size = int(np.prod(shape)) * dtype.itemsize
        data = file[entry["offset"]:entry["offset"] + size].view(dtype).reshape(shape)
        array = dequantize(data, GGMLQuantizationType(entry["type"]))
        kind = entry["name"].split(".")[-2] if entry["name"].startswith("blk.") else ""
        if needs_unpermute and kind in permute and entry["name"].endswith(".weight"):
            array = unpermute_rotary(array, permute[kind])
        name = hf_name(entry["name"], names)
        # a copy: unquantized tensors come back as read-only views of the mapped file
        weight = torch.from_numpy(np.array(array, dtype=np.float32))
        yield name, (weight if convert is None else convert(name, weight))
