"""Imports point one way: config → data | models | optim | decode → train → report → tune →
workflow. A module may import its own package and any earlier layer, never a later one or a
sibling of its layer; entry points (``__main__`` modules, and ``llqr.plan``, which only holds the
``python -m llqr.plan`` entry) sit above everything. The workflow control plane (matrix, plan,
cost, flops, resources, validator, job entry points) is one package, ``llqr.workflow``."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "llqr"
LAYERS = (("atomic", "config"), ("data", "models", "optim", "decode"), ("train",), ("report",), ("tune",),
          ("workflow", "plan"))
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(module: list[str]) -> str | None:
    """The top-level unit of llqr a dotted module path belongs to."""
    return module[1] if len(module) > 1 and module[0] == "llqr" else None


def _imports(path: Path):
    module = list(path.relative_to(REPO).with_suffix("").parts)
    package = module[:-1]  # the package a relative import starts from (an __init__'s is its own folder)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield node.lineno, base + (node.module.split(".") if node.module else [])
            elif node.module:
                yield node.lineno, node.module.split(".")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")


def test_every_unit_of_the_package_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert units <= set(RANK), f"put these in a layer of tests/test_layers.py: {sorted(units - set(RANK))}"


def test_imports_point_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        source = _unit(list(path.relative_to(REPO).with_suffix("").parts))
        for line, target in _imports(path):
            unit = _unit(target)
            if unit is None or unit == source or unit not in RANK:
                continue
            if RANK[unit] >= RANK[source]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports llqr.{'.'.join(target[1:])} "
                             f"({source} is layer {RANK[source]}, {unit} is layer {RANK[unit]})")
    assert not wrong, "\n".join(wrong)
