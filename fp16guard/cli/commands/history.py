"""``fp16guard history NAME [--model-version V] [--json] [--store S]``: every run and release of a model.

Prints one line per run (time, version, run id, status (verified / rejected), release mark, FP32
node count, FP16 share of the estimated FLOPs, worst relative error, trigger), then the release history of each version. ``--json`` prints
``{"runs": [...], "releases": {version: [...]}}`` instead. Exit 0; 2 when the model is unknown.
"""

from __future__ import annotations

import argparse
import math

from fp16guard.cli.common import add_model_version, add_store_argument


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``history`` command."""
    p = sub.add_parser(
        "history",
        help="list the runs and releases of a model in the store",
        description="One line per run of NAME (time, version, run id, status, release, FP32 nodes, FP16 share of the estimated FLOPs, worst relative error, trigger), then each version's release history.",
    )
    p.add_argument("name", help="model name")
    add_model_version(p, required=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_store_argument(p)
    p.set_defaults(func=main)


def _num(value, fmt: str) -> str:
    if value is None:
        return "-"
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else str(value)


def main(args: argparse.Namespace) -> int:
    """Print the history; returns 0."""
    import sys

    from fp16guard.store.audit import history
    from fp16guard.store.runs import Store

    store = Store(args.store)
    damaged: list[str] = []  # damaged records are reported and skipped, not fatal
    rows = history(store, args.name, args.model_version, damaged)
    versions = sorted({r["version"] for r in rows}) if not args.model_version else [args.model_version]
    releases = {v: store.release_history(args.name, v) for v in versions}
    if args.json:
        from fp16guard.records import dumps

        # Strict JSON: a non-finite worst error (an output went NaN/inf) is the string "inf".
        print(dumps({"store": store.url, "name": args.name, "runs": rows, "releases": releases, "damaged": damaged}, indent=2, sort_keys=False))
        return 0
    for line in dict.fromkeys(damaged):
        print(f"fp16guard: warning: {line}", file=sys.stderr)
    if not rows:
        what = f"{args.name}/{args.model_version}" if args.model_version else args.name
        print(f"{what}: no runs in {store.url}")
        return 0
    from fp16guard.plan.cost import fmt_share

    header = ("time", "version", "run id", "status", "release", "fp32", "fp16 flops", "worst rel err", "trigger")
    table = [header] + [
        (
            (r["time"] or "-")[:19],
            r["version"],
            r["run_id"],
            r["status"],
            "RELEASED" if r["released"] == "current" else r["released"] or "",
            _num(r["fp32_nodes"], "d"),
            fmt_share(r["fp16_share"]) if r.get("fp16_share") is not None else "-",
            _num(r["worst_rel_error"], ".3g"),
            r["trigger"] or "-",
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    for version, records in releases.items():
        if records:
            print(f"\nreleases of {args.name}/{version}:")
            for rec in records:
                how = f"promoted over {rec['previous_run_id']}" if rec.get("promoted") else "first verified run"
                print(f"  #{rec['seq']}  {rec['released_at'][:19]}  {rec['run_id']}  ({how})")
    return 0
