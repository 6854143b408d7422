"""Result files: every figure a benchmark measures lands in ``benchmarks/results/`` with the
date, the machine, the commit, the load average and the exact command that produced it.

Names: ``<benchmark>-<YYYY-MM-DD>-<machine tag>[-<label>].{json,md}``. The JSON holds the
context under ``"context"`` next to the benchmark's own record; the Markdown opens with the same
context as a list. Both are written atomically (``fp16guard.io.atomic``): a reader sees the old
file or the whole new one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from benchmarks.harness.gpu import gpu_names

__all__ = ["RESULTS_DIR", "BadInput", "Log", "commit", "context", "context_lines", "machine_description", "machine_tag", "paths", "read_json", "write"]

REPO = Path(__file__).resolve().parents[2]
#: Where results go unless a benchmark is told otherwise.
RESULTS_DIR = REPO / "benchmarks" / "results"


def machine_tag() -> str:
    """Short machine label for file names: ``$FP16GUARD_BENCH_MACHINE``, else the GPU model
    (``h100``, ``h200``: the first token with a digit of its name, lower case), else
    ``cpu<cores>``."""
    given = os.environ.get("FP16GUARD_BENCH_MACHINE")
    if given:
        return re.sub(r"[^A-Za-z0-9_.]+", "_", given)
    gpus = gpu_names()
    if gpus:
        token = next((t for t in gpus[0].split() if any(c.isdigit() for c in t)), gpus[0].split()[-1])
        return re.sub(r"[^a-z0-9]+", "", token.lower()) + (f"x{len(gpus)}" if len(gpus) > 1 else "")
    return f"cpu{os.cpu_count()}"


def machine_description() -> str:
    """One line: CPU model, cores, memory, OS, Python, GPUs (``nvidia-smi``) and the onnxruntime
    version when it imports."""
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = "?"
    try:
        kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores, {mem}", f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}"]
    gpus = gpu_names()
    if gpus:
        parts.append(f"GPU {', '.join(gpus)}")
    try:
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def commit(rev: str = "HEAD") -> str:
    """``<short sha> <subject>`` of ``rev`` (default HEAD); for HEAD with ``(work tree differs)``
    when tracked files under fp16guard/, tasks/, flows/ or benchmarks/ have uncommitted changes.
    Outside a git checkout: ``$FP16GUARD_BENCH_COMMIT`` when set, else ``unknown``."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run(git + ["log", "-1", "--format=%h %s", rev], capture_output=True, text=True)
    if head.returncode != 0:
        # A copy of the tree without .git (a lent GPU machine): the commit its caller passed.
        given = os.environ.get("FP16GUARD_BENCH_COMMIT")
        return f"{given} (from FP16GUARD_BENCH_COMMIT)" if given else f"unknown ({rev}: not a git revision here)"
    dirty = "" if rev != "HEAD" else subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "fp16guard", "tasks", "flows", "benchmarks"],
                                                    capture_output=True, text=True).stdout.strip()
    text = head.stdout.strip()
    text = text if len(text) <= 100 else text[:99] + "…"  # the sha and the start of the subject identify it
    return text + (" (work tree differs)" if dirty else "")


def context(name: str, argv: list[str] | None, **extra: Any) -> dict:
    """What a result file must say about its run, taken at the start of the run.

    Args:
        name: the benchmark's name (``python -m benchmarks NAME``).
        argv: its arguments (None: ``sys.argv[1:]``).
        extra: more keys for the record (e.g. ``device`` from :func:`.gpu.device_description`).

    Returns:
        ``benchmark``, ``date`` (UTC, ISO 8601), ``machine``, ``machine_tag``, ``commit``,
        ``load_average`` (1, 5, 15 min at the start; the machine may be shared), ``command``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_description(),
            "machine_tag": machine_tag(), "commit": commit(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "command": shlex.join(["python", "-m", "benchmarks", name, *args]), **extra}


def context_lines(ctx: dict) -> list[str]:
    """The context as Markdown list lines (the head of every result's ``.md``)."""
    load = ", ".join(str(v) for v in ctx["load_average"])
    lines = [f"- date: {ctx['date']}", f"- machine: {ctx['machine']}", f"- commit: {ctx['commit']}",
             f"- load average at start (1, 5, 15 min): {load}" + (f"; at end: {', '.join(str(v) for v in ctx['load_average_end'])}" if "load_average_end" in ctx else ""),
             f"- command: `{ctx['command']}`"]
    lines += [f"- {k}: {v}" for k, v in ctx.items() if k not in ("benchmark", "date", "machine", "machine_tag", "commit", "load_average", "load_average_end", "command")]
    return lines


class BadInput(Exception):
    """A file given to a benchmark that is not what it expects (the message is one line)."""


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON in ``path``.

    Raises:
        BadInput: the file is missing or not JSON; the message names it and ``what`` was expected.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"{path}: not {what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def paths(ctx: dict, label: str | None = None, results_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``<results_dir>/<benchmark>-<date>-<machine tag>[-label].json`` and ``.md`` for a run
    (``results_dir`` default ``benchmarks/results/``), for benchmarks that write their own
    Markdown (and rewrite both files as results come in)."""
    folder = Path(results_dir) if results_dir else RESULTS_DIR
    stem = f"{ctx['benchmark']}-{ctx['date'][:10]}-{ctx['machine_tag']}" + (f"-{label}" if label else "")
    return folder / f"{stem}.json", folder / f"{stem}.md"


def write(ctx: dict, record: dict, markdown: str, label: str | None = None, results_dir: str | os.PathLike | None = None,
          title: str | None = None) -> tuple[Path, Path]:
    """Write ``<name>-<date>-<machine>[-label].json`` and ``.md`` (atomically).

    Args:
        ctx: from :func:`context`; the load average at the end is added here.
        record: the benchmark's figures (JSON-serialisable; other objects as ``str``).
        markdown: the body of the ``.md`` (tables, notes), after the context.
        label: optional suffix of the names (e.g. ``baseline``).
        results_dir: folder (default ``benchmarks/results/``).
        title: first line of the ``.md`` (default the benchmark's name and the date).

    Returns:
        The JSON and Markdown paths.
    """
    from fp16guard.io import atomic

    ctx = {**ctx, "load_average_end": [round(v, 2) for v in os.getloadavg()]}
    js, md = paths(ctx, label, results_dir)
    atomic.write_text(js, json.dumps({"context": ctx, **record}, indent=1, default=str) + "\n")
    head = [f"# {title or ctx['benchmark']} — {ctx['date'][:16].replace('T', ' ')} UTC", "", *context_lines(ctx), ""]
    atomic.write_text(md, "\n".join(head) + "\n" + markdown.rstrip("\n") + "\n")
    return js, md


class Log:
    """Print lines and keep them, to write the same table to a results file afterwards.

    With a context (:func:`context`), the first lines said are the context's, as ``# `` comments,
    so a text file of the lines carries its date, machine, commit, load and command.
    """

    def __init__(self, ctx: dict | None = None) -> None:
        self.lines: list[str] = []
        self.ctx = ctx
        for line in context_lines(ctx) if ctx else []:
            self.say("# " + line[2:])
        self._head = len(self.lines)

    def say(self, text: str = "") -> None:
        """Print ``text`` (flushed) and keep it."""
        print(text, flush=True)
        self.lines.append(text)

    @contextlib.contextmanager
    def capture(self) -> Iterator["Log"]:
        """Keep what the block prints to stdout as lines too (it still prints), for benchmarks
        that print from deep inside their steps."""
        log = self

        class _Tee(io.TextIOBase):
            def __init__(self, stream) -> None:
                self.stream, self.pending = stream, ""

            def write(self, text: str) -> int:
                self.stream.write(text)
                self.pending += text
                *done, self.pending = self.pending.split("\n")
                log.lines.extend(done)
                return len(text)

            def flush(self) -> None:
                self.stream.flush()

        tee = _Tee(sys.stdout)
        with contextlib.redirect_stdout(tee):
            try:
                yield self
            finally:
                if tee.pending:
                    self.lines.append(tee.pending)

    def save(self, out: str | None, json_path: str | None, results: Any, label: str | None = None,
             results_dir: str | os.PathLike | None = None) -> list[Path]:
        """Write the kept lines to ``out`` (text) and ``results`` as JSON to ``json_path``,
        atomically; with neither, and a context, both go to the results folder by :func:`write`.

        The JSON is ``{"context": ..., **results}`` (a list of results: under ``"results"``).

        Returns:
            The paths written.
        """
        from fp16guard.io import atomic

        ctx = {**self.ctx, "load_average_end": [round(v, 2) for v in os.getloadavg()]} if self.ctx else None
        record = results if isinstance(results, dict) else {"results": results}
        if ctx:
            record = {"context": ctx, **record}
        if not out and not json_path and ctx:
            body = "```\n" + "\n".join(self.lines[self._head:]) + "\n```\n"
            return list(write(self.ctx, {k: v for k, v in record.items() if k != "context"}, body, label=label, results_dir=results_dir))
        written = []
        if out:
            written.append(atomic.write_text(out, "\n".join(self.lines) + "\n"))
        if json_path:
            written.append(atomic.write_text(json_path, json.dumps(record, indent=2, default=str) + "\n"))
        return written
