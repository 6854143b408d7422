"""Benchmark: what one cache lock costs, lock files in a local folder against lock objects in an
S3 store (moto's server on loopback), per cache entry a run computes.

Each cycle is what ``tasks.caching.TaskCache.compute`` does around one missing shard: take the
lock (``acquire``), then ``release`` it; nothing is computed in between. The S3 variant is 3 HTTP
requests (conditional PUT, GET, conditional DELETE); the local one is a hard link, a read and an
unlink under ``flock``. ``--cycles`` cycles (default 200) on distinct keys, after 20 warm-up
cycles; it prints the median and the 90th percentile per cycle in milliseconds, and writes the
same lines with date, machine, load, commit and command to ``--out`` when given, else to
``benchmarks/results/remote_locks-DATE-MACHINE.{json,md}``.

A real S3 endpoint adds its network round trip (~10-30 ms within a region) to each of the three
requests; moto on loopback shows the client-side cost only.

Usage:
    .venv/bin/python -m benchmarks remote_locks [--cycles 200] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
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

SUMMARY = "One cache lock's cost: lock files in a local folder against lock objects in S3 (moto, loopback)"


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("moto_server did not start")
            time.sleep(0.1)


def _cycles(locks, n: int, warmup: int = 20) -> list[float]:
    out = []
    for i in range(warmup + n):
        key = uuid.uuid4().hex
        start = time.perf_counter()
        locks.acquire(key, "bench", timeout=0)
        locks.release(key, "bench")
        if i >= warmup:
            out.append((time.perf_counter() - start) * 1000)
    return out


def _line(name: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=10)
    return f"| {name} | {len(ms)} | {statistics.median(ms):.2f} | {q[8]:.2f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks remote_locks", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    ctx = bench_results.context("remote_locks", argv)

    proc, endpoint = _moto()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", FP16GUARD_S3_ENDPOINT_URL=endpoint)
    try:
        import boto3

        from fp16guard.store.fs import open_fs
        from fp16guard.store.locks import LeaseLocks
        from fp16guard.store.remote_locks import RemoteLeaseLocks

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="fp16guard-bench")
        remote = RemoteLeaseLocks(open_fs("s3://fp16guard-bench/store"), ".cache/locks/bench", report=lambda m: None)
        with tempfile.TemporaryDirectory() as folder:
            local = LeaseLocks(folder, report=lambda m: None)
            rows = [_line("lock files, local folder", _cycles(local, args.cycles)), _line("lock objects, S3 store (moto, loopback)", _cycles(remote, args.cycles))]
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    lines = ["| locks | cycles | median ms per acquire+release | p90 ms |", "|---|---|---|---|", *rows]
    print("\n".join(lines))
    if args.out:
        from fp16guard.io import atomic

        head = [f"# remote_locks — {ctx['date'][:16].replace('T', ' ')} UTC", "", *bench_results.context_lines(ctx), ""]
        atomic.write_text(args.out, "\n".join(head + lines) + "\n")
    else:
        js, md = bench_results.write(ctx, {"cycles": args.cycles, "rows": rows}, "\n".join(lines), title="remote_locks")
        print(f"wrote {md} and {js.name}")
    return 0
