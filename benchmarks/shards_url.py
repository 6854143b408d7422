"""Shards by URL, timed: the same one-sample shards on disk and in an S3 bucket (moto on loopback).

For ``--shards`` one-sample shards of the demo model (written once into a temporary folder and
uploaded to a bucket of a moto server this benchmark starts on 127.0.0.1):

1. discovery and digests as the flow's ``discover`` task does them (list, then the sha256 of
   every shard): local files; S3 objects hashed :data:`fp16guard.io.remote.DIGEST_THREADS` at a
   time (the default); S3 objects one at a time;
2. ``fp16guard stats`` in a new process, local folder against ``s3://`` prefix (wall seconds,
   start and imports included), and whether the two ``stats.parquet`` hold the same figures.

Each figure is the median of ``--repeats`` rounds, the variants interleaved within a round. Moto
answers on loopback without network latency: the figures give fp16guard's own cost per object
(fsspec, HTTP, hashing), not what a remote bucket adds per request.

Usage::

    .venv/bin/python -m benchmarks shards_url [--shards 300] [--repeats 3] [--label L]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "Shards by URL: discovery + sha256 and fp16guard stats, local files vs S3 objects (moto on loopback)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(port: int) -> subprocess.Popen:
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        raise SystemExit("moto_server is not installed (pip install 'moto[server]'); it serves the S3 bucket this benchmark reads")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"moto_server did not start on port {port}")
            time.sleep(0.1)


def _discover(location: str, threads: int | None) -> tuple[float, list[str]]:
    """Seconds to list ``location`` and hash every shard; the digests."""
    from fp16guard.io import remote
    from fp16guard.io.shards import discover_shards, shard_digests

    start = time.perf_counter()
    refs = discover_shards([location])
    digests = shard_digests(refs) if threads is None else remote.sha256_many([r.path for r in refs], threads=threads)
    return time.perf_counter() - start, digests


def _stats(model: str, calib: str, out: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fp16guard.cli.main", "stats", model, "--calib", calib, "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=1800)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"fp16guard stats --calib {calib} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks shards_url", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=300, help="one-sample shards (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is their median (default 3)")
    parser.add_argument("--label", default=None, help="suffix of the result files' names")
    parser.add_argument("--results", default=None, help="folder for the result files (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.shards < 1 or args.repeats < 1:
        print(f"--shards and --repeats must be at least 1, got {args.shards} and {args.repeats}", file=sys.stderr)
        return 2
    from fp16guard import examples
    from fp16guard.io.remote import DIGEST_THREADS
    from fp16guard.stats.collect import read_stats

    ctx = bench_results.context("shards_url", argv, shards=args.shards, repeats=args.repeats)
    work = Path(tempfile.mkdtemp(prefix="fp16guard-bench-shards-url-"))
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env_s3 = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "FP16GUARD_S3_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env_s3}
    os.environ.update(env_s3)
    moto = _start_moto(port)
    try:
        import s3fs

        model = str(examples.save_model("demo", work / "demo.onnx"))
        calib = work / "calib"
        examples.write_shards("demo", calib, args.shards, 1, seed=7)
        bucket = "bench-" + uuid.uuid4().hex[:8]
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, use_listings_cache=False)
        fs.mkdir(bucket)
        for f in sorted(calib.iterdir()):
            fs.pipe_file(f"{bucket}/calib/{f.name}", f.read_bytes())
        url = f"s3://{bucket}/calib"
        variants = {"local files": (str(calib), None), f"S3, {DIGEST_THREADS} at a time": (url, None), "S3, one at a time": (url, 1)}
        times: dict[str, list[float]] = {name: [] for name in variants}
        digests = {}
        stats_times: dict[str, list[float]] = {"local": [], "s3": []}
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for round_ in range(args.repeats):
            for name, (location, threads) in variants.items():
                seconds, digests[name] = _discover(location, threads)
                times[name].append(seconds)
            for kind, location in (("local", str(calib)), ("s3", url)):
                stats_times[kind].append(_stats(model, location, work / f"{kind}.parquet", env))
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items())
                  + f"; stats local {stats_times['local'][-1]:.1f} s, s3 {stats_times['s3'][-1]:.1f} s", flush=True)
        same_digests = len({tuple(d) for d in digests.values()}) == 1
        local_table, s3_table = read_stats(work / "local.parquet"), read_stats(work / "s3.parquet")
        figures = [c for c in local_table.column_names if c not in ("max_shard", "nonfinite_shard")]
        same_figures = local_table.select(figures).equals(s3_table.select(figures))
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(work, ignore_errors=True)

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    record = {
        "discovery_seconds": {n: {"median": med(t), "rounds": [round(v, 3) for v in t], "per_shard_ms": round(1000 * statistics.median(t) / args.shards, 2)} for n, t in times.items()},
        "stats_seconds": {k: {"median": med(t), "rounds": [round(v, 3) for v in t]} for k, t in stats_times.items()},
        "same_digests": same_digests,
        "same_stats_figures": same_figures,
    }
    lines = [f"{args.shards} one-sample shards of the demo model; medians of {args.repeats} rounds.", "",
             "| discovery + sha256 of every shard | seconds | ms per shard |", "|---|---:|---:|"]
    lines += [f"| {n} | {r['median']:.2f} | {r['per_shard_ms']:.1f} |" for n, r in record["discovery_seconds"].items()]
    lines += ["", "| `fp16guard stats` (new process) | seconds |", "|---|---:|"]
    lines += [f"| {'local folder' if k == 'local' else 's3:// prefix'} | {r['median']:.1f} |" for k, r in record["stats_seconds"].items()]
    lines += ["", f"Digests equal across the three: {same_digests}. stats.parquet figures equal (all columns but the shard names): {same_figures}.",
              "Moto answers on loopback: no network latency is in these figures."]
    js, md = bench_results.write(ctx, record, "\n".join(lines), label=args.label, results_dir=args.results, title="Shards by URL")
    print(f"wrote {md} and {js.name}")
    return 0 if same_digests and same_figures else 1
