"""`nanovllm-api`: serve a model over the OpenAI API.

Every flag is a ServerConfig setting; a flag given on the command line beats
NANOVLLM_* environment variables, which beat the --config file, which beats the
defaults.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from typing import Any

from nanovllm_api.config import ServerConfig
from nanovllm_core import plugins
from nanovllm_core.config import DTYPE_ALIASES
from nanovllm_core.loader.source import ModelNotFoundError

FLAG_ALIASES = {"config_file": "--config"}
EXTRA_CHOICES = {"dtype": list(DTYPE_ALIASES)}  # the config normalises these


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _argument_options(annotation: Any) -> dict[str, Any]:
    base = _unwrap_optional(annotation)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) is typing.Literal:
        return {"choices": list(typing.get_args(base))}
    if typing.get_origin(base) is list:
        return {"nargs": "+"}
    if base in (int, float):
        return {"type": base}
    return {}


def build_parser(config_cls: type[ServerConfig] = ServerConfig, prog: str = "nanovllm-api") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve an LLM over the OpenAI-compatible API (chat, completions, streaming).",
        epilog="Every setting can also come from NANOVLLM_<SETTING> or the --config file.",
        argument_default=argparse.SUPPRESS,
    )
    for name, field in config_cls.model_fields.items():
        flag = FLAG_ALIASES.get(name, "--" + name.replace("_", "-"))
        default = field.default_factory() if field.default_factory else field.default
        help_text = f"{field.description} (default: {default})"
        options = _argument_options(field.annotation)
        if name in EXTRA_CHOICES:
            options["choices"] = options["choices"] + EXTRA_CHOICES[name]
        parser.add_argument(flag, dest=name, help=help_text, **options)
    parser.add_argument(
        "--list-plugins", action="store_true", default=False, help="List installed models, attention backends, "
        "chat templates, samplers, grammar backends, tool-call parsers, reasoning parsers and poolers, with the distribution providing each, and exit."
    )
    return parser


def format_plugins() -> str:
    lines = []
    registries = (plugins.model_architectures(), plugins.attention_backends(), plugins.chat_templates(),
                  plugins.samplers(), plugins.grammar_backends(), plugins.tool_call_parsers(), plugins.reasoning_parsers(),
                  plugins.poolers())
    for registry in registries:
        lines.append(f"{registry.kind}s:")
        lines.extend(f"  {entry.name:<24} {entry.provider}" for entry in registry.entries())
    return "\n".join(lines)


def main(argv: list[str] | None = None, config_cls: type[ServerConfig] = ServerConfig, prog: str = "nanovllm-api") -> None:
    args = vars(build_parser(config_cls, prog).parse_args(argv))
    if args.pop("list_plugins"):
        print(format_plugins())
        return
    from nanovllm_api.server import run_server

    try:
        config = config_cls(**args)
    except ValueError as error:
        sys.exit(f"{prog}: {error}")
    try:
        run_server(config=config)
    except ModelNotFoundError as error:  # a wrong --model is the user's to fix: a message, not a traceback
        sys.exit(f"{prog}: {error}")
