"""``fp16guard stats``: per-tensor FP32 activation statistics, without Prefect.

Measures every float tensor of the model on the calibration shards (one onnxruntime session for
all shards), writes the reduced table (``--out``, STATS_SCHEMA) and optionally the per-shard
table (``--shard-stats``), and prints a short summary. Both files are written only after every
shard succeeded, each atomically: an error leaves no partial output.
"""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected a positive number of samples") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive; expected at least 1 sample per call")
    return value


def register(subparsers) -> None:
    """Add the ``stats`` command to the CLI."""
    p = subparsers.add_parser(
        "stats",
        help="measure per-tensor activation statistics on calibration data (no Prefect server)",
        description="Run the FP32 model on calibration shards with in-graph reductions and write one row per float tensor (min, max, max_abs, nonfinite, shards, samples, max_shard).",
    )
    p.add_argument("model", help="FP32 ONNX model (.onnx; external data beside it)")
    p.add_argument("--calib", nargs="+", required=True, metavar="PATH", help=".npz files, folders of them, globs, or Polygraphy JSON inputs files; local or at an fsspec URL (s3://bucket/prefix)")
    p.add_argument("--out", required=True, metavar="FILE.parquet", help="where to write the reduced statistics (one row per tensor)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N", help="samples per inference call (default: whole shard; a static model batch wins)")
    p.add_argument("--shard-stats", default=None, metavar="FILE.parquet", help="also write the per-shard statistics here")
    p.add_argument("--providers", nargs="+", default=None, metavar="EP", help="onnxruntime execution providers (default auto: CUDAExecutionProvider with TF32 off when a GPU and onnxruntime-gpu are present, else CPUExecutionProvider)")
    p.add_argument("--top", type=int, default=5, help="how many of the largest tensors the summary lists (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``fp16guard stats``. Returns 0; raises UserError subclasses on bad input."""
    from fp16guard.io.shards import discover_shards
    from fp16guard.progress import Progress
    from fp16guard.runners.onnxrt import choose_providers
    from fp16guard.stats.collect import write_stats_files
    from fp16guard.stats.parallel import measure_shards

    shards = discover_shards(args.calib, "calibration")
    # Several one-thread sessions at once (the figures do not depend on how many), tables in order.
    with Progress(len(shards), "shards") as bar:
        tables, used = measure_shards(args.model, shards, batch_size=args.batch_size, providers=choose_providers(args.providers), on_shard=bar.advance)
    reduced = write_stats_files(tables, args.out, args.shard_stats)
    print(summary(reduced, len(shards), args.top))
    print(f"providers: {', '.join(used)}" + (" (TF32 off)" if "CUDAExecutionProvider" in used else ""))
    print(f"wrote {args.out}" + (f" and {args.shard_stats}" if args.shard_stats else ""))
    return 0


def summary(table, shard_count: int, top: int = 5) -> str:
    """A few lines: how many tensors, how many exceed FP16's range, the largest ones."""
    from fp16guard import FP16_MAX

    rows = table.to_pylist()
    samples = rows[0]["samples"] if rows else 0
    over = [r for r in rows if r["max_abs"] > FP16_MAX]
    lines = [
        f"{len(rows)} float tensors measured over {shard_count} shard(s), {samples} sample(s); "
        f"{len(over)} exceed the FP16 maximum {FP16_MAX:g}"
    ]
    worst = sorted(rows, key=lambda r: r["max_abs"], reverse=True)[: max(0, top)]
    for r in worst:
        ratio = r["max_abs"] / FP16_MAX
        where = f"{r['op_type']} {r['producer']}" if r["producer"] else "graph input"
        lines.append(f"  {r['tensor']:<40} max|x| {r['max_abs']:<12.6g} {ratio:6.2f}x FP16 max  ({where}; shard {r['max_shard']})")
    return "\n".join(lines)
