"""Which benchmarks exist: every module directly in ``benchmarks/`` (not ``_``-prefixed).

A benchmark module defines ``SUMMARY`` (one line: what it measures) and
``main(argv: list[str] | None = None) -> int`` (its exit status). Helpers live in sub-packages
(``harness/``, ``real_models/``) and never run on their own: the only script of the folder is
``benchmarks/__main__.py``, plus the :data:`WORKERS` that a benchmark starts in another
interpreter. ``tests/test_benchmarks_harness.py`` holds every module to this.
"""

from __future__ import annotations

import importlib
import types
from pathlib import Path

__all__ = ["BENCHMARKS_DIR", "WORKERS", "BenchmarkError", "load", "names", "summary"]

#: The ``benchmarks/`` folder.
BENCHMARKS_DIR = Path(__file__).resolve().parents[1]

#: Files run by path in another interpreter (where ``benchmarks`` may not import), with why.
WORKERS = {
    "autocast_convert.py": "run by autocast_compare inside the ModelOpt AutoCast virtual environment (its own onnx/onnxruntime)",
}


class BenchmarkError(Exception):
    """A benchmark name that does not exist, or a module that lacks the harness entry point."""


def names() -> list[str]:
    """Benchmark names, sorted: the stems of ``benchmarks/*.py`` but ``_*`` and the workers."""
    return sorted(p.stem for p in BENCHMARKS_DIR.glob("*.py") if not p.name.startswith("_") and p.name not in WORKERS)


def load(name: str) -> types.ModuleType:
    """Import benchmark ``name`` and check its entry point.

    Raises:
        BenchmarkError: no such benchmark, or it lacks ``SUMMARY`` (a one-line str) or ``main``.
    """
    if name not in names():
        raise BenchmarkError(f"no benchmark named {name!r}; expected one of: {', '.join(names())}")
    module = importlib.import_module(f"benchmarks.{name}")
    text = getattr(module, "SUMMARY", None)
    if not isinstance(text, str) or not text.strip() or "\n" in text.strip():
        raise BenchmarkError(f"benchmarks/{name}.py has no one-line SUMMARY string (expected: SUMMARY = \"what it measures\")")
    if not callable(getattr(module, "main", None)):
        raise BenchmarkError(f"benchmarks/{name}.py has no main(argv) -> int")
    return module


def summary(name: str) -> str:
    """The module's ``SUMMARY`` read from its source, without importing it (no numpy needed).

    Raises:
        BenchmarkError: the module has no ``SUMMARY = "..."`` assignment at top level.
    """
    import ast

    tree = ast.parse((BENCHMARKS_DIR / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SUMMARY" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value.strip()
    raise BenchmarkError(f"benchmarks/{name}.py has no SUMMARY = \"...\" line")
