"""Repository checks that CI runs with the default tests: the lint rule set in pyproject.toml
(ruff) and the one-way rule — hemaedge.edge, what ships to a device, imports nothing else of the
project and none of the training stack (checked on the source, lazy imports inside functions included,
and by importing every edge module with the training stack made unimportable)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EDGE = REPO / "edge"
# Project packages edge/ must not reach (hemaedge.edge itself and the root's __version__ are fine).
PROJECT_OUTSIDE_EDGE = ("hemaedge.train", "hemaedge.export", "hemaedge.benchmarks", "hemaedge.cli",
                        "hemaedge.deploy", "hemaedge.deploy_cli")
TRAINING_STACK = ("tensorflow", "keras", "sklearn", "torch", "albumentations", "tf2onnx", "onnx", "skl2onnx",
                  "matplotlib")


def test_ruff_lint_passes():
    try:
        import ruff  # noqa: F401  (the dev extra pins it)
    except ImportError:
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(REPO)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, f"ruff found problems (fix them, or `ruff check --fix`):\n{p.stdout}{p.stderr}"


def _imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, absolute module, imported names) for every import in the file, at any depth."""
    package = "hemaedge.edge"  # edge/ is flat: every file's package
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: one dot is hemaedge.edge, two are hemaedge
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{module}" if module else base
            out.append((node.lineno, module, tuple(a.name for a in node.names)))
    return sorted(out)


def _forbidden(module: str, names: tuple[str, ...]) -> str | None:
    top = module.split(".")[0]
    if top in TRAINING_STACK:
        return "the training stack"
    if module == "hemaedge":
        extra = [n for n in names if n != "__version__"]
        return f"hemaedge.{extra[0]}" if extra else None
    if any(module == p or module.startswith(p + ".") for p in PROJECT_OUTSIDE_EDGE):
        return module
    return None


def test_edge_source_imports_nothing_else_of_the_project():
    files = sorted(EDGE.rglob("*.py"))
    assert len(files) > 10, f"edge/ sources not found under {EDGE}"
    bad = [f"{f.relative_to(REPO)}:{line}: imports {module} ({why})"
           for f in files for line, module, names in _imports(f)
           if (why := _forbidden(module, names))]
    assert not bad, "edge/ must stay device-light (the one-way rule):\n" + "\n".join(bad)


def test_boundary_check_catches_violations(tmp_path):
    # The checker itself can fail: a lazy import of train/ inside a function is found.
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from hemaedge.train.datasets import load\n    import tensorflow as tf\n"
                 "from hemaedge import __version__\nfrom . import bundle\n")
    found = [(m, _forbidden(m, n)) for _, m, n in _imports(f)]
    assert found == [("hemaedge.train.datasets", "hemaedge.train.datasets"), ("tensorflow", "the training stack"),
                     ("hemaedge", None), ("hemaedge.edge", None)]


def test_every_edge_module_imports_without_the_training_stack():
    modules = sorted(f"hemaedge.edge.{p.stem}" for p in EDGE.glob("*.py") if p.stem != "__init__")
    blocked = PROJECT_OUTSIDE_EDGE + TRAINING_STACK
    code = ("import sys, importlib\n"
            f"for m in {blocked!r}: sys.modules[m] = None  # import raises ImportError\n"
            f"for m in {modules!r}: importlib.import_module(m)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]


def test_every_result_tool_imports():
    """The result scripts in benchmarks/tools/ run only when a table is regenerated; an import that
    a refactor broke (a moved or renamed function) must fail here, not months later."""
    import importlib
    import pkgutil

    import hemaedge.benchmarks.tools as tools

    broken = {}
    for mod in pkgutil.iter_modules(tools.__path__):
        try:
            importlib.import_module(f"hemaedge.benchmarks.tools.{mod.name}")
        except ImportError as exc:
            broken[mod.name] = str(exc)
    assert not broken, broken
