"""``python -m benchmarks`` is the one entry point of benchmarks/: it lists every benchmark module,
each has the harness entry point, and no file of the folder runs on its own beside it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(REPO))

from benchmarks.harness import registry  # noqa: E402


def _top_level(path: Path) -> dict[str, ast.AST]:
    """Top-level names of a module's source -> the statement that defines them."""
    out: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            out.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return out


def _runs_on_its_own(path: Path) -> bool:
    """Whether the module has an ``if __name__ == "__main__"`` block."""
    return any(isinstance(n, ast.Compare) and isinstance(n.left, ast.Name) and n.left.id == "__name__"
               and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in n.comparators)
               for n in ast.walk(ast.parse(path.read_text())))


def _lists() -> subprocess.CompletedProcess:
    # From another folder, as a user would: the listing must not depend on the working directory.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "benchmarks"], capture_output=True, text=True, env=env, cwd="/", timeout=60)


def test_every_module_is_listed_with_its_summary():
    modules = sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.name not in registry.WORKERS)
    assert modules == registry.names() and len(modules) >= 10
    proc = _lists()
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0]: line.split(None, 1)[1] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert sorted(listed) == modules
    for name in modules:
        assert listed[name] == registry.summary(name) and "broken" not in listed[name]


@pytest.mark.parametrize("name", registry.names())
def test_each_benchmark_has_the_entry_point(name):
    defs = _top_level(BENCH / f"{name}.py")
    assert isinstance(defs.get("SUMMARY"), ast.Assign), f"benchmarks/{name}.py: no SUMMARY = '...'"
    main = defs.get("main")
    assert isinstance(main, ast.FunctionDef), f"benchmarks/{name}.py: no def main(argv)"
    assert [a.arg for a in main.args.args] == ["argv"], f"benchmarks/{name}.py: main must take (argv), has {[a.arg for a in main.args.args]}"
    assert len(registry.summary(name)) <= 110, f"benchmarks/{name}.py: SUMMARY longer than one listing line"


@pytest.mark.parametrize("name", registry.names())
def test_each_benchmark_imports(name):
    # What python -m benchmarks NAME does first: a helper moved or renamed under a benchmark fails
    # here, not on the lent GPU machine.
    module = registry.load(name)
    assert callable(module.main) and module.SUMMARY == registry.summary(name)


def test_no_file_runs_beside_the_harness():
    # A script that skips the harness (its own __main__ guard) fails here; the workers a benchmark
    # starts in another interpreter are named in registry.WORKERS with the reason.
    own = []
    for path in sorted(BENCH.rglob("*.py")):
        rel = path.relative_to(BENCH).as_posix()
        if rel == "__main__.py" or rel in registry.WORKERS:
            continue
        if _runs_on_its_own(path):
            own.append(rel)
    assert not own, f"run these through python -m benchmarks NAME instead: {own}"
    assert all((BENCH / w).exists() for w in registry.WORKERS)


def test_unknown_name_is_one_line_and_exit_2():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "no_such_bench"], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no_such_bench" in proc.stderr and "expected one of" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_file_that_is_not_a_result_is_one_line_and_exit_2(tmp_path):
    not_json = tmp_path / "table.md"
    not_json.write_text("| a |\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv in (["final_table", str(not_json)], ["gpu_gain", "render", str(tmp_path / "missing.json")]):
        proc = subprocess.run([sys.executable, "-m", "benchmarks", *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0 and "not a " in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]  # nothing written


def test_results_carry_their_context(tmp_path):
    from benchmarks.harness import results

    ctx = results.context("demo_bench", ["--x", "1 2"])
    js, md = results.write(ctx, {"figure": 1.5}, "| a |\n|---|\n| 1 |\n", label="t", results_dir=tmp_path)
    assert js.name == f"demo_bench-{ctx['date'][:10]}-{ctx['machine_tag']}-t.json" and md.with_suffix(".json") == js
    import json

    data = json.loads(js.read_text())
    assert data["figure"] == 1.5
    for key in ("date", "machine", "commit", "load_average", "load_average_end", "command"):
        assert data["context"][key], key
    assert data["context"]["command"] == "python -m benchmarks demo_bench --x '1 2'"
    text = md.read_text()
    assert "- commit: " in text and "- command: `python -m benchmarks demo_bench --x '1 2'`" in text and "load average" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([js.name, md.name])  # no temporary file left


def test_interleaved_timing_counts_every_round():
    from benchmarks.harness import timing

    calls = {"a": 0, "b": 0}

    def bump(k):
        return lambda: calls.__setitem__(k, calls[k] + 1)

    out = timing.interleaved({"a": bump("a"), "b": bump("b")}, warmup=2, rounds=3, per_round=4, rewarm=1)
    assert calls == {"a": 2 + 3 * (1 + 4), "b": 2 + 3 * (1 + 4)}
    assert [len(t.samples_ms) for t in out.values()] == [12, 12]
    assert out["a"].min_ms <= out["a"].median_ms
