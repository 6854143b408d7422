"""``fp16guard convert``: the CLI face of :func:`fp16guard.convert` — no server, no store.

Measures, plans, builds and verifies in this process and writes the verified artifact to
``-o OUT`` (atomically; an existing file only with ``--overwrite``). ``fp16guard run`` stays the
orchestrated path (cached, stored, with lineage and a UI).

Exit status: 0 verified (OUT written), 1 rejected (OUT not written; the candidate stays in the
work folder, which is printed), 2 bad input (one line, nothing written), 3 environment failure.
With ``--json`` the last line on stdout is a JSON object (:meth:`fp16guard.api.Result.to_dict`).
"""

from __future__ import annotations

import argparse

from fp16guard.cli.common import add_plan_arguments

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``convert`` command."""
    p = sub.add_parser(
        "convert",
        help="convert a model to mixed precision and verify it, in this process (no server, no store)",
        usage="%(prog)s MODEL --calib PATH... [--holdout PATH...] -o OUT.onnx [options]",
        description=(
            "Measure every activation of MODEL on the calibration data, find the smallest FP32 set by cost that passes the gate there "
            "(all-FP16 first), build the mixed-precision model, verify it against FP32 on the holdout data and write it to OUT when verified. "
            "Runs in this process: no Prefect server, no store, no cache (fp16guard run does those). Without --holdout, the "
            "last fifth of the calibration data is held out (the summary says so)."
        ),
    )
    p.add_argument("model", nargs="?", help="FP32 ONNX model (before or after the options)")
    p.add_argument("--calib", nargs="+", required=True, metavar="PATH", help="calibration .npz files, folders, globs or Polygraphy JSON")
    p.add_argument("--holdout", nargs="+", default=None, metavar="PATH", help="holdout data for verification (same formats); default: split from the calibration data")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the verified artifact, e.g. model.fp16.onnx (not written when rejected)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse before any work)")
    p.add_argument("--allow-overlap", action="store_true", help="accept holdout data that shares files or content with the calibration data; the verdict then says 'not independent'")
    p.add_argument("--workdir", metavar="DIR", help="keep statistics, plan.json, verification.json and the candidate in DIR (default: a temporary folder, removed when OUT is written)")
    add_plan_arguments(p)
    p.add_argument("--providers", nargs="+", default=[], metavar="EP", help="onnxruntime providers, e.g. CUDAExecutionProvider; default auto: CUDA when a GPU and onnxruntime-gpu are present, else CPU")
    p.add_argument("--no-profile", action="store_true", help="do not time the artifact (only ever timed on a GPU with real FP16 kernels)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Convert, print the summary (and JSON), return 0 verified / 1 rejected."""
    from fp16guard.cli.commands.run import parse_gates
    from fp16guard.cli.common import take_model_argument

    model = take_model_argument(args)
    from fp16guard.api import convert

    result = convert(
        model,
        args.calib,
        args.holdout,
        gate=parse_gates(args.gate),
        strategy=args.strategy,
        providers=[p for p in args.providers if p != "auto"] or None,
        output=args.output,
        overwrite=args.overwrite,
        threshold=args.threshold,
        max_rel_error=args.max_rel_error,
        min_cosine=args.min_cosine,
        force_fp32_nodes=args.force_fp32_nodes,
        force_fp32_ops=args.force_fp32_ops,
        force_fp16_nodes=args.force_fp16_nodes,
        repair=not args.no_repair,
        batch_size=args.batch_size,
        backend=args.backend,
        profile=not args.no_profile,
        allow_overlap=args.allow_overlap,
        workdir=args.workdir,
    )
    print(result)
    if not result.verified:
        print("  hint: lower --threshold (e.g. 1000) or keep nodes in FP32 with --force-fp32-nodes / --force-fp32-ops")
    if args.json:
        from fp16guard.records import dumps

        # Strict JSON: an unbounded worst error is the string "inf", never Infinity.
        print(dumps(result.to_dict()))
    return 0 if result.verified else 1
