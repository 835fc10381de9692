"""The subpackages point one way: core <- conversion, core <- hub, core <- training -> hub.

Read from the source (AST: every import, at the top or inside a function), relative imports resolved: the Hub code
never imports training, not even lazily, so a push needs neither the training code nor its data; conversion never
imports training; the core (the flat modules) imports no subpackage but `files`, which imports nothing of the
package. Inside training, `data/` and `engine/` are leaves (they import nothing of training outside themselves) and
`outputs/` never imports the loop that uses it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_unified"
# Modules that run only where they are deployed (a Space, an Inference Endpoint), beside the model's flat files.
DEPLOYED = {"hf_unified.hub.space_app", "hf_unified.hub.endpoint_handler"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every `hf_unified` module or package the module `name` (its `source`) imports (`from x import y` counts `x`
    and `x.y`)."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module == "hf_unified" or module.startswith("hf_unified.")}


def modules(under: str) -> dict[str, set[str]]:
    folder = PACKAGE / under if under else PACKAGE
    paths = folder.rglob("*.py") if under else folder.glob("*.py")
    return {
        module_name(path): imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")
        for path in sorted(paths)
    }


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def offenders(under: str, forbidden: str) -> list[str]:
    return [
        f"{name} imports {target}"
        for name, targets in modules(under).items()
        for target in sorted(targets)
        if inside(target, forbidden)
    ]


def test_the_hub_code_never_imports_training_or_conversion():
    assert offenders("hub", "hf_unified.training") == []
    assert offenders("hub", "hf_unified.conversion") == []


def test_conversion_never_imports_training():
    assert offenders("conversion", "hf_unified.training") == []


def test_the_core_imports_no_subpackage_but_files():
    subpackages = [path.parent.name for path in PACKAGE.glob("*/__init__.py") if path.parent.name != "files"]
    assert subpackages and "training" in subpackages
    for subpackage in subpackages:
        assert offenders("", f"hf_unified.{subpackage}") == []


def test_files_imports_nothing_of_the_package_but_itself():
    imports = modules("files")
    assert imports and all(inside(target, "hf_unified.files") for targets in imports.values() for target in targets)


@pytest.mark.parametrize("leaf", ["data", "engine"])
def test_data_and_engine_import_nothing_of_training_outside_themselves(leaf):
    own = f"hf_unified.training.{leaf}"
    wrong = [
        f"{name} imports {target}"
        for name, targets in modules(f"training/{leaf}").items()
        for target in sorted(targets)
        if inside(target, "hf_unified.training") and not inside(target, own) and target != "hf_unified.training"
    ]
    assert wrong == []


def test_outputs_never_import_the_loop_that_uses_them():
    allowed = ("hf_unified.training.outputs", "hf_unified.training.data", "hf_unified.training.engine")
    wrong = [
        f"{name} imports {target}"
        for name, targets in modules("training/outputs").items()
        for target in sorted(targets)
        if inside(target, "hf_unified.training")
        and target != "hf_unified.training"
        and not any(inside(target, package) for package in allowed)
    ]
    assert wrong == []


def test_the_checks_see_the_imports_they_forbid():
    """A lazy import of training inside a Hub function, relative or absolute, is found (the checks can fail)."""
    source = "def f():\n    from ..training import data\n    import hf_unified.training.runs\n"
    found = imported_modules(source, "hf_unified.hub.widget")
    assert {"hf_unified.training", "hf_unified.training.data", "hf_unified.training.runs"} <= found
    assert imported_modules("from . import sharding\n", "hf_unified.training.engine", is_package=True) == {
        "hf_unified.training.engine",
        "hf_unified.training.engine.sharding",
    }


def test_every_module_of_the_package_imports():
    """No import left pointing at a module that moved."""
    names = [name for under in ("", "conversion", "files", "hub", "training") for name in modules(under)]
    for name in sorted(set(names) - DEPLOYED):
        importlib.import_module(name)
