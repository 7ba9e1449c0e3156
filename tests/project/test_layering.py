"""No module of zebra_llm imports from a layer above its own (docs/development.md, "Layers").

Every module is parsed with ``ast``, so imports inside functions (the lazy ones) count as much as those at
the top of a file. A module may import from its own layer or any layer below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "zebra_llm"

# Bottom to top; each name is a subpackage or a top-level module of zebra_llm ("__init__": the package's own
# names, such as ``from zebra_llm import convert_to_zebra``).
LAYERS = (
    ("_checks", "io", "config_io", "loading", "flops"),  # shared helpers, no model code
    ("attention",),  # the kernels and their dense references
    ("hf",),  # the glue to transformers' extension points
    ("modeling", "extensions", "dca", "__init__"),  # the models and the extension methods
    ("data", "eval", "train"),  # the tasks
    ("experiments", "serve"),
    ("cli", "__main__"),
)
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    """``zebra_llm.eval.report`` for ``src/zebra_llm/eval/report.py`` (a package: its ``__init__`` kept)."""
    return ".".join(("zebra_llm",) + path.relative_to(PACKAGE).with_suffix("").parts)


def unit_of(module: str) -> str:
    """The layer unit of a dotted name inside zebra_llm: its first part below the package, when that is
    a subpackage or module; otherwise (a name the package's ``__init__`` defines) ``"__init__"``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    first = parts[1]
    if (PACKAGE / first).is_dir() or (PACKAGE / f"{first}.py").is_file():
        return first
    return "__init__"


def imported(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import of zebra_llm in ``tree``, wherever it is written; for
    ``from X import a`` each ``X.a`` (which may be a module or a name)."""
    package = module.split(".") if module.endswith(".__init__") else module.split(".")[:-1]
    package = [p for p in package if p != "__init__"]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "zebra_llm"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == "zebra_llm":
                found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            found.append((node.lineno, node.args[0].value))
    return found


def _dynamic_import(node: ast.Call) -> bool:
    """``__import__("zebra_llm...")`` or ``importlib.import_module("zebra_llm...")``."""
    name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
    return (name in ("__import__", "import_module") and bool(node.args) and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str) and node.args[0].value.split(".")[0] == "zebra_llm")


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    units = {unit_of(module_name(p)) for p in modules()}
    assert units - set(LEVEL) == set(), "give each new subpackage or top-level module its place in LAYERS"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in modules():
        module = module_name(path)
        own = unit_of(module)
        for line, target in imported(ast.parse(path.read_text(encoding="utf-8")), module):
            other = unit_of(target)
            if LEVEL.get(other, -1) > LEVEL.get(own, len(LAYERS)):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {target} ({other})")
    assert upward == [], "upward imports:\n" + "\n".join(upward)


@pytest.mark.parametrize("source, module, expected", [
    ("from ..experiments.cells import load_results", "zebra_llm.eval.report",
     [(1, "zebra_llm.experiments.cells.load_results")]),
    ("def f():\n    from ..modeling import configuration_zebra", "zebra_llm.hf.zebra_attention",
     [(2, "zebra_llm.modeling.configuration_zebra")]),
    ("from . import cache", "zebra_llm.modeling.__init__", [(1, "zebra_llm.modeling.cache")]),
    ("from .. import convert_to_zebra", "zebra_llm.train.lcat", [(1, "zebra_llm.convert_to_zebra")]),
    ("import zebra_llm.serve.app as a", "zebra_llm.cli.serve", [(1, "zebra_llm.serve.app")]),
    ("__import__('zebra_llm.cli.serve')", "zebra_llm.cli.__init__", [(1, "zebra_llm.cli.serve")]),
    ("import torch\nfrom torch import nn", "zebra_llm.io", []),
])
def test_imports_are_found_wherever_they_are_written(source, module, expected):
    assert imported(ast.parse(source), module) == expected


def test_units():
    assert unit_of("zebra_llm.convert_to_zebra") == "__init__"  # a name of the package, not a module
    assert unit_of("zebra_llm.eval.report.report") == "eval"
    assert unit_of("zebra_llm.loading") == "loading"
    assert LEVEL["attention"] < LEVEL["hf"] < LEVEL["modeling"] < LEVEL["eval"] < LEVEL["experiments"] < LEVEL["cli"]
