"""``pipeline/``'s imports: no cycle, and no module importing one from a higher layer.

Every module is parsed with :mod:`ast`; nothing is imported, so nothing runs. Every
``import`` statement of a module counts, wherever it stands:

* at the top;
* inside a function (a lazy import, kept lazy for start-up time): it ties the two
  modules together as soon as it runs, so it closes a cycle like any other;
* under ``if TYPE_CHECKING:``: the module's types name the other one, so its meaning
  depends on it, and a checker or a reader must load both.

``from pkg import name`` is an import of ``pkg.name`` when that is a module, else of
``pkg`` itself (its ``__init__``). The implicit import of a module's parent packages,
which Python makes for every submodule, is not an edge: no code chose it.

The layers, bottom up; a module may import its own layer and those below. A module
missing from the table fails the test, so a new one gets a place when it is written.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Plain data and the one exception tree: the words every layer speaks.
    ("data", ("errors", "models")),
    # No I/O: bytes, text and records in, values out.
    ("pure", ("sse", "gradio", "space_config", "hf_status", "retry", "prompts", "durations",
              "clock", "digests", "rowspec", "batching", "settings")),
    # The only modules that touch the network (aiohttp), and the secrets it carries.
    ("transport", ("client", "http_errors", "provider", "sessions", "proxies", "redaction")),
    # Rows to results: planning, concurrency, retries, endpoints, the stop switch.
    ("batch", ("runner", "limits", "endpoints", "jobs", "watchdog")),
    # Input and output files, their formats, locks and memory.
    ("files", ("atomic", "readers", "readers_arrow", "records", "errorlog", "lock", "jsonl", "writers",
               "parquet_output", "parquet_order", "parquet_types", "partitioned", "alloc",
               "columns", "provenance", "sort")),
    # What runs the planned rows through the batch core (a package: every submodule).
    ("engines", ("engines",)),
    # Commands, the terminal, and programs of their own.
    ("front", ("__init__", "__main__", "app", "check", "cli", "config", "progress", "summary",
               "demo", "report", "report_plot", "fake_space")),
)


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int
    how: str  # "", "lazily" (inside a function) or "for types" (under TYPE_CHECKING)

    def __str__(self) -> str:
        how = f" ({self.how})" if self.how else ""
        return f"{self.path}:{self.line}: {self.source} imports {self.target}{how}"


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root``, by dotted name (a package is its ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _kinds(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Each import statement with how it is made: "", "lazily" or "for types"."""

    def visit(node: ast.AST, how: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, how
                continue
            inner = how
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = how or "lazily"
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from visit(ast.Module(body=child.body, type_ignores=[]), "for types")
                yield from visit(ast.Module(body=child.orelse, type_ignores=[]), how)
                continue
            yield from visit(child, inner)

    yield from visit(tree, "")


def imports(root: Path) -> list[Import]:
    """The imports between the modules of the package at ``root``, read from the source."""
    modules = module_names(root)
    found = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        where = str(path.relative_to(root.parent))
        for node, how in _kinds(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules
                           else prefix for alias in node.names]
            for target in dict.fromkeys(targets):
                while target and target not in modules:  # import a.b.c: the module a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.append(Import(name, target, where, node.lineno, how))
    return found


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def layer_of(module: str, package: str, table: Mapping[str, int]) -> int | None:
    """The layer of ``module``: its own entry, else that of the nearest package holding it."""
    relative = module[len(package) + 1:] if module != package else "__init__"
    while relative:
        if relative in table:
            return table[relative]
        relative = relative.rpartition(".")[0]
    return None


def check(root: Path, layers: tuple[tuple[str, tuple[str, ...]], ...]) -> list[str]:
    """Every way the package at ``root`` breaks the rules, one line each (none: it keeps them)."""
    table = {module: rank for rank, (_, modules) in enumerate(layers) for module in modules}
    names = [layer for layer, _ in layers]
    package = root.name
    edges = imports(root)
    problems = []
    for module in module_names(root):
        if layer_of(module, package, table) is None:
            problems.append(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")
    for component in cycles(edges):
        members = set(component)
        problems.append("cycle: " + ", ".join(component) + "".join(
            f"\n    {edge}" for edge in edges if edge.source in members and edge.target in members))
    for edge in edges:
        source = layer_of(edge.source, package, table)
        target = layer_of(edge.target, package, table)
        if source is not None and target is not None and target > source:
            problems.append(f"{edge}: layer {names[source]} imports the higher layer {names[target]}")
    return problems


def test_pipeline_has_no_import_cycle_and_no_import_up_the_layers() -> None:
    problems = check(PACKAGE, LAYERS)
    assert not problems, "\n".join(problems)


def test_every_module_in_the_table_exists() -> None:
    known = {m[len("pipeline."):] if m != "pipeline" else "__init__" for m in module_names(PACKAGE)}
    stale = [m for _, modules in LAYERS for m in modules if m not in known]
    assert not stale, f"LAYERS names modules that are gone: {stale}"


def _package(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


TOY_LAYERS = (("low", ("base", "other")), ("high", ("__init__", "app", "sub")))


def test_a_lazy_import_that_closes_a_cycle_is_caught(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "base.py": "from pkg.other import x\n",
        "other.py": "def f():\n    from . import base\n",
        "app.py": "import pkg.base\n",
    })
    problems = check(root, TOY_LAYERS)
    assert len(problems) == 1 and problems[0].startswith("cycle: pkg.base, pkg.other")
    assert "pkg/other.py:2: pkg.other imports pkg.base (lazily)" in problems[0]


@pytest.mark.parametrize("statement", [
    "from pkg.app import run\n",
    "from pkg import app\n",
    "import pkg.app\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .app import run\n",
    "from . import sub\n",  # a package's submodule takes the package's layer
    "from pkg import name_of_the_package_init\n",
])
def test_an_import_up_the_layers_is_caught(tmp_path: Path, statement: str) -> None:
    root = _package(tmp_path, {"__init__.py": "", "app.py": "", "other.py": "",
                               "sub/__init__.py": "", "sub/part.py": "",
                               "base.py": statement})
    problems = check(root, TOY_LAYERS)
    assert len(problems) == 1 and "pkg/base.py" in problems[0], problems
    assert "layer low imports the higher layer high" in problems[0]


def test_imports_down_the_layers_and_a_parent_package_are_fine(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "from .app import run\n",
        "app.py": "from .base import x\nfrom . import sub\nimport json\n",
        "base.py": "import pkg.other\n",
        "other.py": "",
        "sub/__init__.py": "def f():\n    from .part import y\n",
        "sub/part.py": "from ..base import x\n",
    })
    assert check(root, TOY_LAYERS) == []


def test_a_module_without_a_layer_is_caught(tmp_path: Path) -> None:
    root = _package(tmp_path, {"__init__.py": "", "base.py": "", "new.py": ""})
    assert check(root, TOY_LAYERS) == [
        "pkg.new has no layer: add it to LAYERS in tests/test_layers.py"]
