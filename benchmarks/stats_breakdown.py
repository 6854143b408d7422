"""Benchmark (issue 18): what one shard costs in the flow's statistics pass, part by part.

On N one-sample shards of the demo model (``fp16guard.examples``), each part is timed in **thread
CPU time** with one onnxruntime intra-op thread, best of 3 passes, so the figures are the work of
the calling thread and barely move with the load of a shared machine (wall-clock figures are in
``benchmarks/flow_scale.py``'s results):

* the plain pass: ``np.load`` of the shard, then a plain onnxruntime inference;
* the statistics library: reading the shard with its digest, preparing the feeds, the
  instrumented inference (packed outputs, as the pass runs it; and the one-output-per-figure
  model of :func:`fp16guard.graph.instrument.instrument` for comparison), and
  :meth:`fp16guard.stats.collect.StatsSession.run` as a whole;
* the per-shard cache of the flow (:mod:`tasks.shard_cache`, a local store on the Prefect server
  in use): the key, a miss, the payload's encoding, a write (payload and record), a hit.

Writes ``benchmarks/results/stats_breakdown-<date>-<machine>.{json,md}`` (date, machine, load,
commit, command, one line per part).

Usage:
    .venv/bin/python -m benchmarks stats_breakdown [--shards 300] [--machine NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "One shard's CPU cost in the statistics pass, part by part (read, feeds, inference, cache)"


def _clock(items, fn) -> float:
    """Best of 3 passes over ``items``: thread CPU milliseconds per item."""
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        for item in items:
            fn(item)
        best = min(best, (time.thread_time() - start) / len(items) * 1e3)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks stats_breakdown", description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=300)
    ap.add_argument("--machine", default=f"cpu{os.cpu_count()}")
    args = ap.parse_args(argv)
    ctx = bench_results.context("stats_breakdown", argv)
    ctx["machine_tag"] = args.machine

    import numpy as np
    import onnxruntime as ort

    from fp16guard import examples
    from fp16guard.cli.commands.run import quiet_prefect_console
    from fp16guard.cli.server import ensure_api
    from fp16guard.graph.instrument import float_tensors, instrument
    from fp16guard.io.lazy_weights import load_graph_only
    from fp16guard.io.model import normalize_model
    from fp16guard.io.shards import discover_shards, prepare_feeds, read_shard
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner
    from fp16guard.stats.collect import StatsSession
    from prefect.settings import PREFECT_API_URL, temporary_settings

    quiet_prefect_console(False)
    api_url, local = ensure_api()
    work = Path(tempfile.mkdtemp(prefix="stats_breakdown-"))
    model = str(examples.save_model("demo", work / "demo.onnx"))
    files = examples.write_shards("demo", work / "shards", args.shards, 1, seed=7)
    refs = discover_shards([str(work / "shards")])
    rows: list[tuple[str, float]] = []

    def npload(path):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    plain = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = [npload(p) for p in files]
    rows.append(("plain: np.load", _clock(files, npload)))
    rows.append(("plain: inference", _clock(feeds, lambda f: plain.run(None, f))))
    session = StatsSession(model, intra_op_threads=1)
    with session:
        rows.append(("stats: read_shard (np.load + sha256)", _clock(refs, read_shard)))
        rows.append(("stats: read_shard + prepare_feeds", _clock(refs, lambda r: prepare_feeds(r, read_shard(r)[0], session.specs))))
        fetch = session._shard_fetch(len(session._varying))
        rows.append(("stats: instrumented inference (packed)", _clock(feeds, lambda f: session._runner.infer(f, fetch))))
        graph = normalize_model(load_graph_only(model))
        with OnnxRuntimeRunner(instrument(graph, float_tensors(graph)), external_data_dir=work, execution_order="priority_based", cpu_arena=False, intra_op_threads=1) as scalar:
            names = scalar.output_names
            rows.append(("stats: instrumented inference (one output per figure)", _clock(feeds, lambda f: scalar.infer(f, names))))
        rows.append(("stats: StatsSession.run, all of it", _clock(refs, session.run)))
        tables = [session.run(r) for r in refs]
    with temporary_settings({PREFECT_API_URL: api_url} if local else {}):
        from tasks.caching import SafeSerializer
        from tasks.shard_cache import entries_for
        from tasks.stats import STATS_CACHE_EXCLUDE, shard_stats_task

        entries = entries_for(str(work / "store"), "stats", shard_stats_task, STATS_CACHE_EXCLUDE)
        keys = [entries.key({"model_sha256": "a" * 64, "shard_sha256": f"{i:064d}", "code": "c" * 64}) for i in range(len(refs))]
        values = [{"shard": r.name, "sha256": "b" * 64, "table": t, "computed_by": "f" * 36, "computed_at": "2026-12-06T00:00:00+00:00"} for r, t in zip(refs, tables)]
        rows.append(("cache: key", _clock(refs, lambda r: entries.key({"model_sha256": "a" * 64, "shard_sha256": "d" * 64, "code": "c" * 64}))))
        rows.append(("cache: get (miss)", _clock(keys, entries.get)))
        rows.append(("cache: payload encoding", _clock(values, SafeSerializer().dumps)))
        rows.append(("cache: put (encoding + payload + record)", _clock(list(zip(keys, values)), lambda kv: entries.put(*kv))))
        rows.append(("cache: get (hit)", _clock(keys, entries.get)))

    lines = [
        f"{args.shards} one-sample shards of the demo model; thread CPU ms per shard, 1 intra-op thread, best of 3",
        "",
        "```",
        *(f"{name:58s} {ms:7.3f}" for name, ms in rows),
        "```",
    ]
    print("\n".join(lines))
    js, md = bench_results.write(ctx, {"shards": args.shards, "cpu_ms_per_shard": dict(rows)}, "\n".join(lines), title="stats_breakdown")
    print(f"wrote {md} and {js.name}")
    return 0
