"""``fp16guard demo``: the whole flow on a built-in example that really overflows FP16.

Builds the example model and its calibration/holdout shards in code (nothing is downloaded),
runs the flow into the store as model ``demo`` version ``1``, and shows what a naive all-FP16
build would have produced on the same holdout data, next to fp16guard's result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fp16guard.cli.commands.run import add_run_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser(
        "demo",
        help="run the whole flow on a built-in example that overflows FP16",
        description="Build a small model that overflows FP16 and its data in --workdir (default $PREFECT_HOME/fp16guard-demo; nothing is downloaded), show that a plain all-FP16 build fails, then run the whole flow on it as model demo, version 1.",
    )
    p.add_argument("--workdir", default=None, help="folder for the example model and data (default $PREFECT_HOME/fp16guard-demo, so a clone stays clean)")
    p.add_argument("--example", default="demo", help="which built-in example (default demo)")
    add_run_arguments(p)
    p.set_defaults(func=main)


def prepare(example: str, workdir: str | Path) -> dict:
    """Write the example model and its data into ``workdir`` (idempotent: same bytes each time).

    Returns:
        ``{"model", "calib", "holdout"}`` paths.
    """
    from fp16guard import examples

    work = Path(workdir)
    model = examples.save_model(example, work / f"{example}.onnx")
    # Shards of different sizes exercise dynamic batch handling; different seeds keep holdout
    # data unseen by calibration.
    examples.write_shards(example, work / "calib", 4, [32, 32, 16, 8], seed=1)
    examples.write_shards(example, work / "holdout", 2, 32, seed=2)
    return {"model": str(model), "calib": str(work / "calib"), "holdout": str(work / "holdout")}


def default_workdir() -> Path:
    """``<PREFECT_HOME>/fp16guard-demo``: beside the local server's database, never inside the
    folder the user happens to be in (a clone would get an untracked folder)."""
    from fp16guard.cli.server import prefect_home

    return prefect_home() / "fp16guard-demo"


def naive_fp16_verdict(model_path: str, holdout: str) -> dict:
    """Verify the all-FP16 build of the model (what a plain converter gives) on ``holdout``."""
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.shards import discover_shards
    from fp16guard.io.model import load_model
    from fp16guard.verify.compare import verify

    model = load_model(model_path)
    return verify(model, to_mixed_precision(model, set()), discover_shards([holdout], "holdout"))


def main(args: argparse.Namespace) -> int:
    """Prepare the example, run the flow, print where everything is."""
    from fp16guard.cli.commands.run import execute
    from fp16guard.settings import RunParameters, parse_parameters

    workdir = args.workdir or default_workdir()
    paths = prepare(args.example, workdir)
    print(f"example model and data: {Path(workdir).resolve()}")
    naive = naive_fp16_verdict(paths["model"], paths["holdout"])
    print(f"all-FP16 build (no fp16guard): {'passes' if naive['passed'] else 'FAILS'} — {naive['reason'] or 'within tolerance'}")
    params = parse_parameters(
        RunParameters,
        {"model": paths["model"], "calib": [paths["calib"]], "holdout": [paths["holdout"]], "name": args.example, "version": "1", "store": args.store},
    )
    code = execute(params, as_json=args.json, verbose=args.verbose)
    if not args.json:  # with --json the last stdout line must be the JSON summary
        print(f"open the report above in a browser; list the runs with: fp16guard history {args.example}")
    return code
