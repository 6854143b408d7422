"""Benchmark (issue 18): the statistics pass over many one-sample shards, with and without the flow.

For each shard count (default 300), on the demo model (``fp16guard.examples``, a small CNN), side
by side in one process and one run, on fresh stores (nothing cached):

* ``plain``: one onnxruntime session (CPU, default options) over the shards: ``np.load`` + ``run``;
* ``stats (in-process)``: :class:`fp16guard.stats.collect.StatsSession` over the shards, as
  ``fp16guard stats`` does, without process start and imports;
* ``fp16guard stats`` (CLI): the command as a user runs it (a new Python process; its start and
  imports, ~2-3 s here, are in the figure);
* ``flow threads``: the flow's statistics pass (:func:`flows.calibrate.statistics_pass`, the code
  ``fp16guard run`` executes: shard groups, per-shard cache, task runs on the Prefect server) with
  the default runner, inside a flow that only fingerprints, discovers and reduces; also with
  smaller groups (``--sweep``) to show where the default group size comes from;
* ``flow dask N``: the same with ``--task-runner dask`` on a local cluster of N worker processes
  (the cluster's start is in the figure);
* ``flow threads, cached``: the default runner again on the store the first flow run filled.

Per-shard overhead of a flow variant = (its time - plain's time) / shards; the target is at most
20% of plain's per-shard time. Every flow variant's stats.parquet is compared byte for byte.

Results go to ``benchmarks/results/flow_scale-<date>-<machine>.{json,md}`` with the date, machine,
commit, load average and command (``--machine`` names the file's machine tag).

Usage:
    .venv/bin/python -m benchmarks flow_scale [--shards 300 3000] [--dask-workers 1 2 4] [--sweep 16 64] [--machine NAME]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "The statistics pass over many one-sample shards: plain onnxruntime, fp16guard stats, the flow"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plain_pass(model: str, shards: list[Path]) -> float:
    import numpy as np
    import onnxruntime as ort

    start = time.perf_counter()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for path in shards:
        with np.load(path) as z:
            feeds = {k: z[k] for k in z.files if k in names}
        session.run(None, feeds)
    return time.perf_counter() - start


def stats_in_process(model: str, shards: list[Path], out: Path) -> float:
    from fp16guard.io.shards import discover_shards
    from fp16guard.stats.collect import StatsSession, write_stats_files

    start = time.perf_counter()
    refs = discover_shards([str(p) for p in shards])
    with StatsSession(model, providers=["CPUExecutionProvider"]) as session:
        tables = [session.run(ref) for ref in refs]
    write_stats_files(tables, out)
    return time.perf_counter() - start


def stats_cli(model: str, folder: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fp16guard.cli.main", "stats", model, "--calib", str(folder), "--out", str(out), "--providers", "CPUExecutionProvider"],
        check=True, capture_output=True, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return time.perf_counter() - start


def make_stats_flow():
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner

    @flow(name="fp16guard-flow-scale", task_runner=ThreadPoolTaskRunner(max_workers=1), validate_parameters=False)
    def stats_only(params, out_dir: str) -> dict:
        """The calibrate flow's first steps only: fingerprint, discover, the statistics pass, reduce."""
        from flows.calibrate import statistics_pass
        from fp16guard.store.runs import open_store
        from tasks.inputs import discover, fingerprint_model
        from tasks.stats import reduce_stats_task

        store = open_store(params.store)
        model = fingerprint_model(params.model)
        calib = discover(params.calib, "calibration")
        start = time.perf_counter()
        results = statistics_pass(params, store.url, model["sha256"], calib, ["CPUExecutionProvider"])
        seconds = time.perf_counter() - start
        files = reduce_stats_task(results, out_dir)
        return {"stats_pass_s": seconds, "stats": files["stats"], "computed_here": sum(1 for r in results if r["computed_by"] == results[0]["computed_by"])}

    return stats_only


def flow_variant(stats_only, model: str, folder: Path, store: Path, out: Path, execution: dict) -> dict:
    from fp16guard.settings import RunParameters

    out.mkdir(parents=True, exist_ok=True)
    params = RunParameters(model=model, calib=[str(folder)], holdout=[str(folder)], name="bench", version="1", store=str(store), providers=["CPUExecutionProvider"], execution=execution)
    start = time.perf_counter()
    result = stats_only(params, str(out))
    result["flow_s"] = time.perf_counter() - start
    result["sha256"] = _sha(Path(result["stats"]))
    return result


def _sample_shards(sample: str, folder: Path, n: int) -> list[Path]:
    """``n`` one-sample shards from sample 0 of ``sample``, each perturbed by seeded noise of 1e-3
    of the input's spread, so that shards differ (each its own content digest and cache entry)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    with np.load(sample) as z:
        base = {k: z[k][:1] for k in z.files}
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        feeds = {k: (v + rng.normal(0, 1e-3 * (float(v.std()) or 1.0), v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in base.items()}
        path = folder / f"{i:05d}.npz"
        np.savez(path, **feeds)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks flow_scale", description=__doc__.splitlines()[0])
    ap.add_argument("--shards", nargs="+", type=int, default=[300])
    ap.add_argument("--dask-workers", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--sweep", nargs="*", type=int, default=[16, 64], help="extra group sizes (samples) for the threads runner, at the first shard count")
    ap.add_argument("--machine", default=f"cpu{os.cpu_count()}")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--model", default=None, help="an ONNX model to use instead of the demo model (with --sample)")
    ap.add_argument("--sample", default=None, help="a .npz of the model's inputs; sample 0 (first axis) is perturbed per shard (seeded) so that every shard has its own content and cache key")
    args = ap.parse_args(argv)

    from fp16guard.cli.commands.run import quiet_prefect_console

    quiet_prefect_console(False)
    from fp16guard.cli.server import ensure_api

    from fp16guard import examples
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url, local = ensure_api()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="flow_scale-"))
    if bool(args.model) != bool(args.sample):
        ap.error("--model and --sample go together")
    model = args.model or str(examples.save_model("demo", work / "demo.onnx"))
    ctx = bench_results.context("flow_scale", argv)
    ctx["machine_tag"] = args.machine
    record = {"model": f"{Path(args.model).name} (sample 0 of {Path(args.sample).name}, perturbed per shard), CPU" if args.model else "fp16guard.examples demo (small CNN), CPU", "results": []}
    stats_only = make_stats_flow()
    with temporary_settings({PREFECT_API_URL: api_url} if local else {}):
        for n in args.shards:
            folder = work / f"shards-{n}"
            shards = _sample_shards(args.sample, folder, n) if args.sample else examples.write_shards("demo", folder, n, 1, seed=7)
            row: dict = {"shards": n, "samples_per_shard": 1, "variants": {}}
            v = row["variants"]

            def put(name, seconds, **extra):
                v[name] = {"seconds": round(seconds, 3), **extra}
                print(f"{n:5d} shards  {name:28s} {seconds:8.2f} s  {extra or ''}", flush=True)

            put("plain onnxruntime", plain_pass(model, shards))
            put("stats (in-process)", stats_in_process(model, shards, work / f"inproc-{n}.parquet"))
            reference = _sha(work / f"inproc-{n}.parquet")
            put("fp16guard stats (CLI)", stats_cli(model, folder, work / f"cli-{n}.parquet"))
            variants = [("flow threads (default)", {}, f"threads-{n}")]
            if n == args.shards[0]:
                variants += [(f"flow threads, groups of {g}", {"group_samples": g}, f"threads-g{g}-{n}") for g in args.sweep]
            variants += [(f"flow dask {w} worker{'s' if w > 1 else ''}", {"task_runner": "dask", "workers": w}, f"dask{w}-{n}") for w in args.dask_workers]
            for name, execution, tag in variants:
                r = flow_variant(stats_only, model, folder, work / f"store-{tag}", work / f"out-{tag}", execution)
                put(name, r["stats_pass_s"], flow_s=round(r["flow_s"], 3), identical=r["sha256"] == reference)
            r = flow_variant(stats_only, model, folder, work / f"store-threads-{n}", work / f"out-cached-{n}", {})
            put("flow threads, all cached", r["stats_pass_s"], flow_s=round(r["flow_s"], 3), identical=r["sha256"] == reference)
            plain = v["plain onnxruntime"]["seconds"]
            library = v["stats (in-process)"]["seconds"]
            for name, entry in v.items():
                if name.startswith("flow"):
                    entry["overhead_per_shard_ms"] = round(1000 * (entry["seconds"] - plain) / n, 2)
                    entry["overhead_vs_plain_per_shard"] = round((entry["seconds"] - plain) / plain, 3)
                    entry["overhead_vs_stats_per_shard_ms"] = round(1000 * (entry["seconds"] - library) / n, 2)
            row["plain_per_shard_ms"] = round(1000 * plain / n, 2)
            row["stats_per_shard_ms"] = round(1000 * library / n, 2)
            record["results"].append(row)

    lines = [
        f"- model: {record['model']}; shards of one sample; fresh store per flow variant (nothing cached) except the last row",
        "- time: the statistics pass only (flow variants: `statistics_pass`, i.e. grouping, task runs, cache, Dask cluster start); `flow s`: the whole stats-only flow (fingerprint, discover with shard hashing, reduce)",
        "- overhead: (variant - plain) / plain, per shard; target <= 0.20",
        "",
    ]
    for row in record["results"]:
        lines += [
            f"## {row['shards']} shards (plain: {row['plain_per_shard_ms']} ms per shard; statistics in-process: {row['stats_per_shard_ms']} ms per shard)",
            "",
            "| variant | seconds | flow s | overhead vs plain per shard (ms) | overhead / plain | overhead vs in-process stats per shard (ms) | stats.parquet identical |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for name, e in row["variants"].items():
            lines.append(f"| {name} | {e['seconds']:.2f} | {e.get('flow_s', '')} | {e.get('overhead_per_shard_ms', '')} | {e.get('overhead_vs_plain_per_shard', '')} | {e.get('overhead_vs_stats_per_shard_ms', '')} | {e.get('identical', '')} |")
        lines.append("")
    js, md = bench_results.write(ctx, record, "\n".join(lines), title="flow_scale")
    print(f"wrote {md} and {js.name}")
    return 0

