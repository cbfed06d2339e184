"""The import structure the architecture promises (docs/architecture.md): contracts
that plugins import never load the engine, the server reaches the engine only
through its client, and no two modules import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = [
    "nanovllm_core.config",
    "nanovllm_core.engine_client",
    "nanovllm_core.errors",
    "nanovllm_core.grammar",
    "nanovllm_core.hookspecs",
    "nanovllm_core.model_class",
    "nanovllm_core.model_info",
    "nanovllm_core.outputs",
    "nanovllm_core.pooling",
    "nanovllm_core.reasoning",
    "nanovllm_core.sampling",
    "nanovllm_core.sampling_params",
    "nanovllm_core.tool_calls",
]
# the engine's modules the server may name: its two clients (app.build_engine_client picks one)
ENGINE_CLIENT_MODULES = {"nanovllm_core.engine.async_llm", "nanovllm_core.engine.data_parallel"}


@pytest.mark.parametrize("contract", CONTRACTS)
def test_a_contract_loads_no_engine_module(contract):
    code = f"import sys, {contract}; print([m for m in sys.modules if m.startswith('nanovllm_core.engine.')])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"{contract} loads {loaded}"


def module_imports(path: Path) -> list[str]:
    """The modules a file imports at run time (not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    type_checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and ast.unparse(block.test) == "TYPE_CHECKING" for node in ast.walk(block)}
    names = []
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_server_reaches_the_engine_only_through_its_client():
    for path in (ROOT / "nanovllm_api").glob("*.py"):
        for name in module_imports(path):
            if name.startswith("nanovllm_core.engine.") or name == "nanovllm_core.engine":
                assert name in ENGINE_CLIENT_MODULES, f"{path.name} imports {name}"


def test_no_import_circles_in_the_core():
    graph = {module_name(path): {name for name in module_imports(path) if name.startswith("nanovllm_core.")}
             for path in (ROOT / "nanovllm_core").rglob("*.py")}
    for module, imports in graph.items():
        for other in imports:
            assert module not in graph.get(other, ()), f"{module} and {other} import each other"
