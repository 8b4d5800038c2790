"""The package's shape: no import cycles, no name hiding a submodule, one definition per concept."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import labkit
from labkit.vocabulary import METHODS

ROOT = Path(labkit.__file__).parent
MODULES = {
    ".".join(("labkit", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__"): path
    for path in ROOT.rglob("*.py")
}


def imports_of(name: str) -> set[str]:
    """labkit modules that ``name`` imports anywhere in its source (in functions too)."""
    tree, found = ast.parse(MODULES[name].read_text()), set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {t for t in targets if t in MODULES and t != name}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_labkit_has_no_import_cycle():
    # A package's __init__ importing its own submodules is no cycle: edges to a module's own parent packages are left out.
    graph = {name: {t for t in imports_of(name) if not name.startswith(t + ".")} for name in MODULES}
    assert find_cycle(graph) is None


@pytest.mark.parametrize("module", sorted(m.name for m in pkgutil.walk_packages(labkit.__path__, "labkit.")))
def test_no_package_attribute_hides_a_submodule(module):
    parent, _, child = module.rpartition(".")
    imported = importlib.import_module(module)
    assert getattr(importlib.import_module(parent), child) is imported


def test_import_as_reaches_the_module():
    import labkit.memory.estimate as estimate_module

    assert estimate_module.CUDA_OVERHEAD_BYTES > 0


def test_only_the_heldout_module_turns_likelihood_into_heldout_loss():
    callers = {name for name, path in MODULES.items() if "negative_log_likelihood(" in path.read_text()}
    assert callers == {"labkit.eval.likelihood", "labkit.eval.heldout"}


def test_method_names_are_listed_in_the_vocabulary_only():
    # Any literal tuple, list or set naming three or more methods outside labkit.vocabulary is a second vocabulary.
    offenders = []
    for name, path in MODULES.items():
        if name == "labkit.vocabulary":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant)} & set(METHODS)
                if len(names) >= 3:
                    offenders.append(f"{name}:{node.lineno}")
    assert offenders == []
