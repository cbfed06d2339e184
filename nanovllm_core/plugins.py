"""The plugin manager: built-ins and installed entry points, through the same hooks.

``NANOVLLM_LOAD_PLUGINS`` restricts auto-loading: unset loads every installed
plugin, an empty string loads none, ``"qwen3,sampling"`` loads only those
entry-point names. Built-ins are always registered.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from importlib.metadata import entry_points

import pluggy

from nanovllm_core import hookspecs
from nanovllm_core.registry import Registry

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nanovllm"
BUILTIN_PLUGINS = ("nanovllm_core.builtins",)
BUILTIN_PROVIDER = "nanovllm (built-in)"

# hook name -> the kind of thing it registers, as users read it in messages
REGISTRY_KINDS = {
    "register_model_architectures": "model architecture",
    "register_attention_backends": "attention backend",
    "register_chat_templates": "chat template",
    "register_samplers": "sampler",
    "register_grammar_backends": "grammar backend",
    "register_tool_call_parsers": "tool-call parser",
    "register_poolers": "pooler",
    "register_reasoning_parsers": "reasoning parser",
}


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    _load_installed_plugins(pm)
    return pm


def _load_installed_plugins(pm: pluggy.PluginManager) -> None:
    selection = os.environ.get("NANOVLLM_LOAD_PLUGINS")
    if selection is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        return
    wanted = {name.strip() for name in selection.split(",") if name.strip()}
    for name in wanted:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
    missing = wanted - {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if missing:
        logger.warning("NANOVLLM_LOAD_PLUGINS names plugins that are not installed: %s", sorted(missing))


def _provider_of(pm: pluggy.PluginManager, plugin: object) -> str:
    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            return dist.project_name
    name = pm.get_name(plugin) or repr(plugin)
    return BUILTIN_PROVIDER if name in BUILTIN_PLUGINS else name


def get_registry(hook_name: str) -> Registry:
    """Collect what every plugin registers through ``hook_name``.

    Each implementation is called on its own so that every name can be
    attributed to the distribution that provides it.
    """
    pm = get_plugin_manager()
    # chat templates are Jinja strings, not lazy import paths
    registry = Registry(REGISTRY_KINDS[hook_name], lazy_strings=hook_name != "register_chat_templates")
    for impl in getattr(pm.hook, hook_name).get_hookimpls()[::-1]:
        provider = _provider_of(pm, impl.plugin)
        impl.function(register=functools.partial(_register, registry, provider))
    return registry


def _register(registry: Registry, provider: str, name: str, target: object) -> None:
    registry.add(name, target, provider)


def model_architectures() -> Registry:
    return get_registry("register_model_architectures")


def attention_backends() -> Registry:
    return get_registry("register_attention_backends")


def chat_templates() -> Registry:
    return get_registry("register_chat_templates")


def samplers() -> Registry:
    return get_registry("register_samplers")


def grammar_backends() -> Registry:
    return get_registry("register_grammar_backends")


def tool_call_parsers() -> Registry:
    return get_registry("register_tool_call_parsers")


def poolers() -> Registry:
    return get_registry("register_poolers")


def reasoning_parsers() -> Registry:
    return get_registry("register_reasoning_parsers")
