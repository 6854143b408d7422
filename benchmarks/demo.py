"""The README's first command, timed: ``fp16guard demo`` as a user runs it, in a fresh Prefect home.

In a temporary folder (its own ``PREFECT_HOME`` and working directory, so nothing of this
machine's own server or store is used or touched), without ``PREFECT_API_URL``:

1. ``fp16guard demo`` once: it starts the local fp16guard server (the first run a user makes);
2. ``fp16guard demo`` ``--runs`` - 1 more times with that server already running (the figure the
   README quotes: a user's second run);
3. ``fp16guard server stop``; the folder is removed.

Each run is a separate process (start and imports in the figure); wall seconds and exit status
per run, and each run's output, go to ``benchmarks/results/demo-DATE-MACHINE.{json,md}``.

Usage::

    .venv/bin/python -m benchmarks demo [--runs 2] [--label L]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "The README's fp16guard demo timed as a user runs it (fresh Prefect home; server start, then warm)"


def _fp16guard(*args: str, env: dict, cwd: Path, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``python -m fp16guard.cli.main ARGS``; wall seconds and the finished process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fp16guard.cli.main", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    return time.perf_counter() - start, proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks demo", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="demo runs (default 2: the first starts the server)")
    parser.add_argument("--label", default=None, help="suffix of the result files' names")
    parser.add_argument("--results", default=None, help="folder for the result files (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        print(f"--runs must be at least 1, got {args.runs}", file=sys.stderr)
        return 2
    ctx = bench_results.context("demo", argv)
    work = Path(tempfile.mkdtemp(prefix="fp16guard-bench-demo-"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(work / "prefect"), PYTHONPATH=str(REPO), NO_COLOR="1")
    runs = []
    try:
        for i in range(args.runs):
            seconds, proc = _fp16guard("demo", env=env, cwd=work)
            runs.append({"run": i + 1, "server": "started by this run" if i == 0 else "already running", "seconds": round(seconds, 2),
                         "exit": proc.returncode, "stdout": proc.stdout, "stderr_tail": proc.stderr[-3000:]})
            print(f"run {i + 1}: exit {proc.returncode}, {seconds:.1f} s", flush=True)
    finally:
        _fp16guard("server", "stop", env=env, cwd=work, timeout=120)
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| run | server | seconds | exit |", "|---|---|---:|---:|"]
    lines += [f"| {r['run']} | {r['server']} | {r['seconds']:.1f} | {r['exit']} |" for r in runs]
    for r in runs:
        lines += ["", f"Output of run {r['run']} (stdout; Prefect's log lines go to stderr):", "", "```", r["stdout"].rstrip(), "```"]
    js, md = bench_results.write(ctx, {"runs": runs}, "\n".join(lines), label=args.label, results_dir=args.results, title="fp16guard demo")
    print(f"wrote {md} and {js.name}")
    return 0 if all(r["exit"] == 0 for r in runs) else 1
