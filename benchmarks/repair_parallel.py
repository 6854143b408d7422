"""Repair's search with its candidate checks fanned out (``PlanSettings.repair_parallel``):
wall time at 1, 2, ... checks at once on a real model, and whether the plan is identical.

Per model (``benchmarks/real_models``: the data and statistics as ``lib_run`` makes them, once),
the rule-based plan is made once, then ``fp16guard.plan.repair.repair_plan`` runs for every
variant, round by round (interleaved, so drift of a shared machine falls on all alike):

- ``pN``: ``repair_parallel = N`` in a thread pool, each check's onnxruntime session with
  onnxruntime's own intra-op thread count (what ``tasks/plan.py`` runs);
- ``pN-split`` (``--split``): the same with ``cores // N`` intra-op threads per check, the
  obvious split, which can make results depend on the parallelism in their last bits (the
  thread probe below shows whether the model's are); with ``--split``, also ``p1-1thread`` (one
  check at a time on one intra-op thread), which tells the gain of checks at once from the cost
  of onnxruntime's intra-op threads on a loaded machine.

First, the thread probe: the FP32 model on the first calibration shard with 1 and with ``cores``
onnxruntime intra-op threads, compared output by output (bit-identical, or the largest absolute
difference): whether the model's results depend on the thread count at all.

Each run's plan is compared with the first variant's first run, less wall times and the
parallelism fields (``repair.seconds``, step seconds, the time in the message, ``parallel``,
``speculative``): ``identical`` means the FP32 set, every step and every figure are the same.

Writes ``benchmarks/results/repair_parallel-<date>-<machine>[-label].{json,md}``.

Usage::

    .venv/bin/python -m benchmarks repair_parallel --models basic-pitch --parallel 1 2 --rounds 2 --split
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "Repair's search at 1, 2, ... checks at once on real models: wall time, unused checks, same plan or not"


def _timeless(plan: dict) -> dict:
    """``plan.json`` less wall times and the parallelism fields (what must match exactly)."""
    record = dict(plan.get("repair") or {})
    for key in ("seconds", "parallel", "speculative"):
        record.pop(key, None)
    record["message"] = re.sub(r", [0-9.]+ s;", ", <time> s;", str(record.get("message", "")))
    record["steps"] = [{k: v for k, v in s.items() if k != "seconds"} for s in record.get("steps", [])]
    return {**plan, "repair": record}


def _differences(a: dict, b: dict) -> list[str]:
    """Where two timeless plans differ, in a few words (first differing step or field)."""
    out = []
    fa = {e["name"] for e in a.get("fp32_nodes", [])}
    fb = {e["name"] for e in b.get("fp32_nodes", [])}
    if fa != fb:
        out.append(f"FP32 sets differ: {len(fa ^ fb)} node(s)")
    ra, rb = a.get("repair", {}), b.get("repair", {})
    for i, (sa, sb) in enumerate(zip(ra.get("steps", []), rb.get("steps", []))):
        keys = [k for k in sa if sa.get(k) != sb.get(k)]
        if keys:
            out.append(f"step {i} differs in {', '.join(keys)}")
            break
    if len(ra.get("steps", [])) != len(rb.get("steps", [])):
        out.append(f"{len(ra.get('steps', []))} vs {len(rb.get('steps', []))} steps")
    for key in ("outcome", "checks", "returned", "stability", "fp32_flops_share"):
        if ra.get(key) != rb.get(key):
            out.append(f"repair.{key} differs")
    return out or ["identical"]


def _prepare(name: str, cache: Path, work: Path):
    """The model, its calibration shards and the rule-based plan (stats as lib_run makes them)."""
    from benchmarks.real_models.lib_run import spec_by_name
    from benchmarks.real_models.run import prepare
    from fp16guard.io.model import load_model
    from fp16guard.io.shards import discover_shards
    from fp16guard.plan.records import Plan
    from fp16guard.plan.strategies import plan_model
    from fp16guard.settings import PlanSettings
    from fp16guard.stats.collect import StatsSession, write_stats_files
    from fp16guard.stats.schema import read_stats

    model_path, calib_dir, _ = prepare(spec_by_name(name), cache, 0)
    calib = discover_shards([str(calib_dir)], "calibration")
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    with StatsSession(str(model_path)) as session:
        tables = [session.run(ref) for ref in calib]
    write_stats_files(tables, out / "stats.parquet", out / "shard_stats.parquet")
    model = load_model(str(model_path))
    data, planned = plan_model(model, read_stats(str(out / "stats.parquet")), PlanSettings(), weights_dir=Path(model_path).parent)
    return planned, Plan.from_dict(data), calib


def _thread_probe(model, shard, cores: int) -> list[str]:
    """The FP32 model at 1 and ``cores`` intra-op threads on one shard: one line per output."""
    import numpy as np

    from fp16guard.io.model import input_specs
    from fp16guard.io.shards import load_shard, prepare_feeds
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner

    feeds = prepare_feeds(shard, load_shard(shard), input_specs(model))
    outs = {}
    for threads in (1, cores):
        with OnnxRuntimeRunner(model, intra_op_threads=threads) as runner:
            outs[threads] = runner.infer(feeds)
    lines = []
    for name, a in outs[1].items():
        b = outs[cores][name]
        if np.array_equal(a, b, equal_nan=True):
            lines.append(f"- `{name}`: bit-identical at 1 and {cores} threads")
        else:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            lines.append(f"- `{name}`: differs at 1 vs {cores} threads in {int(np.count_nonzero(diff))} of {a.size} values, max |diff| {float(np.nanmax(diff)):.3g}")
    return lines


def _run(model, plan, calib, parallel: int, threads: int) -> tuple[float, dict]:
    from fp16guard.plan.repair import repair_plan
    from fp16guard.settings import PlanSettings, VerifySettings

    start = time.perf_counter()
    result = repair_plan(model, plan, calib, PlanSettings(repair_parallel=parallel), VerifySettings(), threads=threads)
    return time.perf_counter() - start, result.to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks repair_parallel", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["basic-pitch"], help="real models (benchmarks/real_models; default basic-pitch)")
    parser.add_argument("--parallel", nargs="+", type=int, default=[1, 2], help="checks at once to compare (default 1 2)")
    parser.add_argument("--split", action="store_true", help="also run each N > 1 with cores // N intra-op threads per check")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every variant, interleaved (default 2)")
    parser.add_argument("--cache", default=None, help="real-models cache (default $FP16GUARD_REAL_CACHE or ~/.cache/fp16guard-real)")
    parser.add_argument("--probe-only", action="store_true", help="only the thread probe, no search")
    parser.add_argument("--label", default=None, help="suffix of the result files' names")
    parser.add_argument("--results", default=None, help="folder for the result files (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or any(p < 1 for p in args.parallel):
        print(f"--rounds and every --parallel must be at least 1, got {args.rounds} and {args.parallel}", file=sys.stderr)
        return 2
    import tempfile

    from benchmarks.real_models.fetch import cache_dir

    ctx = bench_results.context("repair_parallel", argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    variants = [(f"p{p}", p, 0) for p in args.parallel]
    if args.split:
        variants += [(f"p{p}-split", p, max(1, cores // p)) for p in args.parallel if p > 1]
        if cores > 1 and 1 in args.parallel:
            variants.append(("p1-1thread", 1, 1))
    log = bench_results.Log(ctx)
    record: dict = {"cores": cores, "variants": [{"name": n, "parallel": p, "threads": t} for n, p, t in variants], "models": []}
    with tempfile.TemporaryDirectory(prefix="fp16guard-bench-repair-") as work:
        for name in args.models:
            model, plan, calib = _prepare(name, cache_dir(args.cache), Path(work))
            log.say(f"\n## {name}: {len(calib)} calibration shard(s), {len(plan.fp32_nodes)} rule-pinned FP32 node(s)\n")
            probe = _thread_probe(model, calib[0], cores)
            for line in ["Thread probe (FP32 model, first calibration shard):", "", *probe, ""]:
                log.say(line)
            if args.probe_only:
                record["models"].append({"name": name, "calibration_shards": len(calib), "thread_probe": probe})
                continue
            log.say("| round | variant | parallel | intra-op threads | repair s | outcome | FP32 nodes | checks | speculative | load (1 min) | plan vs first |")
            log.say("|---|---|---|---|---|---|---|---|---|---|---|")
            reference = None
            runs = []
            for r in range(args.rounds):
                for vname, parallel, threads in variants:
                    seconds, data = _run(model, plan, calib, parallel, threads)
                    rep = data.get("repair") or {}
                    timeless = _timeless(data)
                    if reference is None:
                        reference = timeless
                    diff = _differences(reference, timeless)
                    load = round(os.getloadavg()[0], 2)
                    runs.append({"round": r + 1, "variant": vname, "parallel": parallel, "threads": threads, "seconds": round(seconds, 2),
                                 "outcome": rep.get("outcome"), "fp32_nodes": len(data.get("fp32_nodes", [])), "checks": rep.get("checks"),
                                 "speculative": rep.get("speculative"), "steps": len(rep.get("steps", [])), "load_1min": load, "plan_vs_first": diff})
                    log.say(f"| {r + 1} | {vname} | {parallel} | {threads or 'onnxruntime default'} | {seconds:.1f} | {rep.get('outcome')} | "
                            f"{len(data.get('fp32_nodes', []))} | {rep.get('checks')} | {rep.get('speculative')} | {load} | {'; '.join(diff)} |")
            record["models"].append({"name": name, "calibration_shards": len(calib), "thread_probe": probe, "runs": runs})
    js, md = bench_results.write(ctx, record, "\n".join(log.lines[log._head:]), label=args.label, results_dir=args.results,
                                 title="Repair's checks fanned out: wall time and plan identity")
    print(f"\nwrote {md} and {js.name}")
    return 0
