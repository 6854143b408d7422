"""Stability of the FP32 set across calibration sets (issue 17: "on three calibration subsets of
one model, the sets differ by at most 10% of their cost").

One real model, default settings, three calibration sets drawn from the same distribution and
disjoint (the model's data builder with seeds 1, 2, 3: different speech, music, pages...), the
same holdout (seed 0) for all three. Each runs the library path of ``real_models.lib_run``
(statistics → plan + repair/search → build → holdout). Then, for every pair of FP32 sets A, B:

* ``cost(A △ B) / cost(A ∪ B)`` — the share of the pair's FP32 cost on which they disagree
  (the figure the target is about; 0 = identical sets);
* ``cost(A △ B) / cost(model)`` — the same against the whole model's cost;
* node counts.

A node's cost is its FLOPs from ``fp16guard.plan.cost.node_costs`` (shapes of one holdout
sample); where a pair's union has no FLOPs at all (only elementwise nodes), bytes are used and
the record says so.

Usage::

    .venv/bin/python -m benchmarks stability --model basic-pitch --label baseline [--code HEAD]

Writes ``benchmarks/results/stability-DATE-MACHINE-MODEL[-LABEL].{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.real_models import flops as _flops  # noqa: E402,F401
from benchmarks.real_models.fetch import cache_dir  # noqa: E402
from benchmarks.real_models.lib_run import run_model, spec_by_name  # noqa: E402
from benchmarks.real_models.run import prepare  # noqa: E402
from benchmarks.harness import results as bench_results  # noqa: E402
from benchmarks.harness.code import export_code, worktree_label  # noqa: E402

SUMMARY = "FP32 set across three disjoint calibration draws of one real model: cost share that differs"


def _costs(model_path: str, sample: dict) -> tuple[dict[str, float], dict[str, float], str]:
    """Per top-level node: FLOPs and bytes (``fp16guard.plan.cost``; else this benchmark's count)."""
    import onnx

    from fp16guard.io.model import load_model

    model = load_model(model_path)
    try:
        from fp16guard.plan.cost import node_costs

        costs = node_costs(model, input_shapes={k: tuple(np.asarray(v).shape) for k, v in sample.items()})
        return {k: float(c.flops or 0) for k, c in costs.items()}, {k: float(c.bytes or 0) for k, c in costs.items()}, "fp16guard.plan.cost.node_costs"
    except ImportError:
        share = _flops.artifact_share(model, model, sample)
        return dict(share.by_holder), {n.name: 0.0 for n in onnx.load(model_path, load_external_data=False).graph.node}, "benchmarks flops.py"


def compare_sets(sets: list[set[str]], flops: dict[str, float], nbytes: dict[str, float]) -> list[dict]:
    total_f = sum(flops.values())
    total_b = sum(nbytes.values())
    out = []
    for (i, a), (j, b) in itertools.combinations(enumerate(sets), 2):
        diff, union = a ^ b, a | b
        fu, fd = sum(flops.get(n, 0) for n in union), sum(flops.get(n, 0) for n in diff)
        bu, bd = sum(nbytes.get(n, 0) for n in union), sum(nbytes.get(n, 0) for n in diff)
        by = "flops" if fu > 0 else "bytes"
        rel = (fd / fu) if fu > 0 else (bd / bu if bu > 0 else 0.0)
        out.append({"pair": [i + 1, j + 1], "sizes": [len(a), len(b)], "differ_nodes": len(diff), "union_nodes": len(union),
                    "by": by, "differ_share_of_union_cost": rel, "differ_flops_share_of_model": fd / total_f if total_f else None,
                    "differ_bytes_share_of_model": bd / total_b if total_b else None,
                    "fp32_flops_share": [sum(flops.get(n, 0) for n in s) / total_f if total_f else None for s in (a, b)]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks stability", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="basic-pitch")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="data seeds of the calibration sets (holdout: seed 0)")
    p.add_argument("--label", default="")
    p.add_argument("--code", default="worktree", help="'worktree' or a git revision for fp16guard/ and tasks/")
    p.add_argument("--results", default=None, help="folder for the result files (default benchmarks/results)")
    args = p.parse_args(argv)
    cache = cache_dir()
    if args.code == "worktree":
        code_label = worktree_label()
    else:
        code, sha = export_code(args.code, cache)
        sys.path.insert(0, str(code))
        code_label = f"commit {sha} (git archive)"
    from fp16guard.io.shards import discover_shards

    spec = spec_by_name(args.model)
    ctx = bench_results.context("stability", argv, fp16guard_code=code_label)
    t0 = time.monotonic()
    runs = []
    for seed in args.seeds:
        _, calib_dir, _ = prepare(spec, cache, seed)
        calib = discover_shards([str(calib_dir)], "calibration")
        out = cache / "artifacts" / f"stability-{args.label or 'run'}" / f"{args.model}-seed{seed}"
        rec = run_model(spec, cache, out, seed=0, calib_refs=calib, all_fp16=(seed == args.seeds[0]))
        runs.append({"seed": seed, "fp32_nodes": rec["fp32_nodes"], "nodes_total": rec["nodes_total"], "share_flops": (rec.get("share") or {}).get("share_flops"),
                     "holdout": rec["holdout"]["worst"], "holdout_passed": rec["holdout"]["passed"], "search": rec["search"]["summary"],
                     "seconds": rec["seconds"], "fp32_names": rec["fp32_names"], "model_path": rec["model_path"], "artifact": rec["artifact"],
                     "all_fp16": rec.get("all_fp16", {}).get("worst") if rec.get("all_fp16") else None})
        print(f"seed {seed}: {rec['fp32_nodes']} FP32 nodes, holdout {rec['holdout']['worst']['text']}, {rec['search']['summary']}", flush=True)
    sample = dict(np.load(Path(runs[0]["artifact"]).parent / "sample.npz"))
    flops, nbytes, source = _costs(runs[0]["model_path"], sample)
    pairs = compare_sets([set(r["fp32_names"]) for r in runs], flops, nbytes)
    worst = max(x["differ_share_of_union_cost"] for x in pairs)
    record = {"model": args.model, "cost_source": source, "runs": runs, "pairs": pairs, "worst_differ_share": worst, "target": 0.10, "meets_target": worst <= 0.10,
              "seconds": time.monotonic() - t0}
    lines = [f"- Calibration sets: the model's data builder with seeds {args.seeds} (disjoint draws of one distribution); holdout: seed 0.",
             f"- Cost of a node: FLOPs from {source} (one holdout sample's shapes).", "",
             "| calibration seed | FP32 nodes / total | FP32 share of FLOPs | holdout error | verdict | search |", "|---|---|---|---|---|---|"]
    for r in runs:
        s = r["search"]
        fp32_share = None if r["share_flops"] is None else 1 - r["share_flops"]
        lines.append(f"| {r['seed']} | {r['fp32_nodes']} / {r['nodes_total']} | {'—' if fp32_share is None else f'{100 * fp32_share:.1f}%'} | "
                     f"{r['holdout']['text']} | {'verified' if r['holdout_passed'] else 'rejected'} | {s.get('outcome')}, {s.get('checks')} checks |")
    lines += ["", "| pair | nodes (A, B) | nodes that differ | differ / union cost | differ / model FLOPs |", "|---|---|---|---|---|"]
    for x in pairs:
        dm = x["differ_flops_share_of_model"]
        lines.append(f"| {x['pair'][0]} vs {x['pair'][1]} | {x['sizes'][0]}, {x['sizes'][1]} | {x['differ_nodes']} of {x['union_nodes']} | "
                     f"{100 * x['differ_share_of_union_cost']:.1f}% (by {x['by']}) | {'—' if dm is None else f'{100 * dm:.2f}%'} |")
    lines += ["", f"Worst pair: {100 * worst:.1f}% of the union's cost — target ≤ 10%: **{'met' if worst <= 0.10 else 'not met'}**."]
    label = args.model + (f"-{args.label}" if args.label else "")
    js, md = bench_results.write(ctx, record, "\n".join(lines), label=label, results_dir=args.results, title=f"Stability of the FP32 set — {args.model}")
    print("\n".join(lines))
    print(f"wrote {md} and {js.name}")
    return 0
