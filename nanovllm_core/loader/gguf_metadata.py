"""A GGUF file's config, tokenizer and quantization, converted once and kept on disk.

transformers reads a GGUF's config and its tokenizer by parsing the whole file's
metadata (every vocabulary entry through numpy): seconds each, on every start, and
again in every tensor-parallel worker; so does gguf's reader before it can find a
tensor (12 s for Gemma 3's 262k-entry vocabulary). The first load of a file writes
them out as an ordinary model directory (config.json, the tokenizer's files, and
nanovllm.json for what transformers' config does not carry, with where each tensor
lies in the file); later loads read that directory. It is keyed by the file's path,
size and modification time and by the transformers version, so a changed file or
library converts again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import transformers
from gguf import GGUFReader
from transformers import AutoConfig, AutoTokenizer

from nanovllm_core.loader.gguf_weights import gguf_config_extras, gguf_quantization, gguf_tensor_table

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when what a converted directory holds changes
SETTINGS_FILE = "nanovllm.json"


def cache_root() -> Path:
    """``$NANOVLLM_CACHE_DIR/gguf``, by default ``~/.cache/nanovllm/gguf`` (XDG_CACHE_HOME honoured)."""
    base = os.environ.get("NANOVLLM_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nanovllm"
    return Path(base) / "gguf"


def cache_name(path: Path) -> str:
    """The converted directory's name: the file's stem and a digest of what identifies this version of it."""
    stat = path.stat()
    identity = f"{CACHE_FORMAT}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return f"{path.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def converted_gguf(path: Path) -> Path:
    """The directory holding ``path``'s config, tokenizer and nanovllm.json, converted now if
    this version of the file has not been before (in a temporary directory, once per process,
    if the cache cannot be written)."""
    return _converted(path, cache_root() / cache_name(path))


@functools.cache
def _converted(path: Path, target: Path) -> Path:
    if (target / SETTINGS_FILE).is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    except OSError as error:
        logger.warning("cannot write the GGUF cache at %s (%s); converting for this process only", target.parent, error)
        target = Path(tempfile.mkdtemp(prefix="nanovllm-gguf-")) / target.name
        staging = Path(tempfile.mkdtemp(dir=target.parent))
    logger.info("reading %s's config and tokenizer (once for this file, then from %s)", path.name, target)
    try:
        _convert(path, staging)
        os.rename(staging, target)
    except OSError:  # another process converted it first
        if not (target / SETTINGS_FILE).is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(path: Path, directory: Path) -> None:
    reader = GGUFReader(path)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    for name, value in gguf_config_extras(reader).items():
        setattr(config, name, value)
    config.save_pretrained(directory)
    settings = {"quantization": gguf_quantization(reader), "tensors": gguf_tensor_table(reader)}
    try:
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(directory)
    except ValueError as error:  # a file without a vocabulary serves with skip_tokenizer_init only
        settings["tokenizer_error"] = str(error)
    (directory / SETTINGS_FILE).write_text(json.dumps(settings))


def gguf_settings(path: Path) -> dict:
    """What nanovllm read from the file beyond transformers' config: its ``quantization``, its
    ``tensors`` (``gguf_tensor_table``), and ``tokenizer_error`` if the file has no tokenizer
    transformers can build."""
    return json.loads((converted_gguf(path) / SETTINGS_FILE).read_text())
