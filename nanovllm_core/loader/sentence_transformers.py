"""How a sentence-transformers checkpoint pools: ``modules.json`` lists the
modules after the transformer, ``1_Pooling/config.json`` the pooling mode."""

from __future__ import annotations

import json
from pathlib import Path

from nanovllm_core.pooling import PoolerConfig

# sentence-transformers' pooling mode flag -> the built-in pooler of that name
POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last",
}
# modules nanovllm runs; any other (a Dense projection, say) would be silently skipped
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


def read_pooler_config(directory: Path) -> PoolerConfig | None:
    """The checkpoint's pooling, or None if it is not a sentence-transformers model."""
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return None
    modules = {entry["type"].rsplit(".", 1)[-1]: entry for entry in json.loads(modules_file.read_text())}
    unsupported = sorted(set(modules) - set(SUPPORTED_MODULES))
    if unsupported:
        raise ValueError(f"{modules_file}: sentence-transformers modules {unsupported} are not supported "
                         f"(nanovllm runs {', '.join(SUPPORTED_MODULES)})")
    if "Pooling" not in modules:
        return None
    settings = json.loads((directory / modules["Pooling"]["path"] / "config.json").read_text())
    modes = [name for flag, name in POOLING_MODES.items() if settings.get(flag)]
    if len(modes) != 1:
        raise ValueError(f"{modules_file}: pooling modes {modes or 'none'}; nanovllm supports exactly one of "
                         f"{sorted(POOLING_MODES)} (or choose one with --pooler)")
    return PoolerConfig(modes[0], normalize="Normalize" in modules)
