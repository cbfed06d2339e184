"""Name -> implementation tables filled by the plugin hooks, imported lazily."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


class UnknownImplementationError(ValueError):
    """A name was asked for that no installed plugin registers."""


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any  # the object, or a lazy "module:attribute" string
    provider: str  # distribution (or plugin name) that registered it
    lazy: bool = True  # False where strings are the values themselves (chat templates)

    def load(self) -> Any:
        if not (self.lazy and isinstance(self.target, str)):
            return self.target
        module_name, _, attribute = self.target.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module


class Registry:
    """The implementations of one kind (e.g. attention backends) by name."""

    def __init__(self, kind: str, lazy_strings: bool = True):
        self.kind = kind
        self.lazy_strings = lazy_strings
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: Any, provider: str) -> None:
        # First registration wins; plugins are called newest-first by pluggy,
        # so a third-party plugin can override a built-in of the same name.
        self._entries.setdefault(name, Entry(name, target, provider, self.lazy_strings))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[name] for name in self.names()]

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise UnknownImplementationError(self.describe_missing(name))
        return self._entries[name].load()

    def describe_missing(self, name: str) -> str:
        installed = ", ".join(f"{e.name} (from {e.provider})" for e in self.entries()) or "none"
        return (
            f"Unknown {self.kind} {name!r}. Installed: {installed}. "
            f"Install a plugin that provides it, or choose one of the installed names."
        )
