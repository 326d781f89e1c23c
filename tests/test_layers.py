"""The house reads top-down (issue 23): methods (``lightning_modules/``, ``datamodules/``, ``callbacks/``,
``train.py``) -> cores (``retrieval/``, ``generation/``, ``rl/``, ``tasks/``) -> infrastructure (``training/``).
No import runs back up, at module level or inside a function: read from the source (AST), nothing is
imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("lightning_modules", "datamodules", "callbacks", "train")
CORES = ("retrieval", "generation", "rl", "tasks")
INFRASTRUCTURE = ("training",)
# what each layer may not import: everything above it
FORBIDDEN = {**{p: METHODS + CORES for p in INFRASTRUCTURE}, **{p: METHODS for p in CORES}}
FORBIDDEN["tasks"] += ("rl",)  # task data, grading and the sandbox serve evaluation without RL (SelfCorrectEvaluator)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in ``path``, relative ones resolved against its package."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((node.lineno, module))
    return sorted(out)


def project_files(packages) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def violations(packages) -> list[str]:
    out = []
    for path in project_files(packages):
        layer = path.relative_to(ROOT).parts[0]
        for line, module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[layer]:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return out


def test_infrastructure_imports_no_core_and_no_method():
    assert violations(INFRASTRUCTURE) == []


def test_cores_import_no_method_and_tasks_no_rl():
    assert violations(CORES) == []


def test_the_check_sees_every_kind_of_import(tmp_path, monkeypatch):
    """A lazy import inside a function and a relative import count too (the test would pass vacuously otherwise)."""
    package = tmp_path / "rl"
    package.mkdir()
    (package / "bad.py").write_text("def f():\n    from lightning_modules import SearchR1\n"
                                    "from ..callbacks import progress\nimport train\nimport torch\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert violations(["rl"]) == ["rl/bad.py:2 imports lightning_modules", "rl/bad.py:3 imports callbacks",
                                  "rl/bad.py:4 imports train"]


# -- the size of a method (issue 23, "Done when") ---------------------------------------------------------------
MAX_LINES = 250
MAX_ARGS = 15


def lightning_modules_by_file() -> dict[Path, list[type]]:
    """The LightningModule classes each file of lightning_modules/ defines (imported: inheritance is checked)."""
    import importlib
    import inspect

    import lightning as L

    out = {}
    for path in project_files(["lightning_modules"]):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = importlib.import_module(name)
        out[path] = [c for _, c in inspect.getmembers(module, inspect.isclass)
                     if c.__module__ == name and issubclass(c, L.LightningModule)]
    return out


def test_lightning_modules_are_short_with_few_constructor_arguments():
    import inspect

    too_long, too_many = [], []
    for path, classes in lightning_modules_by_file().items():
        lines = len(path.read_text().splitlines())
        if classes and lines > MAX_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for cls in classes:
            n = len(inspect.signature(cls.__init__).parameters) - 1  # without self
            if n > MAX_ARGS:
                too_many.append(f"{path.relative_to(ROOT)}: {cls.__name__}.__init__ takes {n} arguments")
    assert too_long == [] and too_many == []


def test_every_package_logs_to_the_console_through_train_py():
    """train.py shows the INFO lines of each package (the precision chosen, skipped data); a package missing from
    its list (training/ and tasks/ were, after the moves) is silent."""
    from train import PACKAGES

    assert sorted(PACKAGES) == sorted(p for p in METHODS + CORES + INFRASTRUCTURE if (ROOT / p).is_dir())
