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

__all__ = ["register", "add_data_source_arguments", "data_from_args"]


def add_data_source_arguments(p: argparse.ArgumentParser) -> None:
    """Data sources other than shard paths, shared by ``convert`` and ``run``
    (:mod:`fp16guard.io.loaders`): materialised into content-addressed ``.npz`` shards first."""
    g = p.add_argument_group(
        "data sources",
        "Instead of (or beside) --calib/--holdout paths. Each is read and checked against the model's inputs, then written as "
        ".npz shards (content-addressed; convert: in the work folder; run: under STORE/.data) that the run reads as usual.",
    )
    g.add_argument("--data-loader-script", action="append", default=[], metavar="FILE.py[:FUNC]", help="calibration data from a Polygraphy-style data loader: FUNC() (default load_data) returns an iterable of feed dicts {input name: numpy array}")
    g.add_argument("--holdout-loader-script", action="append", default=[], metavar="FILE.py[:FUNC]", help="holdout data from a data loader, e.g. the same script's other function: loader.py:load_holdout")
    g.add_argument("--calib-images", action="append", default=[], metavar="DIR", help="calibration images (PNG, PPM/PGM, BMP; JPEG and others with Pillow), preprocessed as --preprocess says")
    g.add_argument("--holdout-images", action="append", default=[], metavar="DIR", help="holdout images, preprocessed the same way")
    g.add_argument(
        "--preprocess",
        metavar="SPEC",
        default="",
        help="image preprocessing, KEY=VALUE pairs joined by commas: size=HxW, resize=stretch|crop, layout=NCHW|NHWC, channels=RGB|BGR|L, "
        "scale=1/255, mean=M[,M,M], std=S[,S,S], input=NAME; e.g. 'size=224x224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225' "
        "(defaults: the input's static size, NCHW, RGB, scale 1/255, mean 0, std 1)",
    )
    g.add_argument("--shard-samples", type=int, default=None, metavar="N", help="samples per materialised shard (consecutive feeds of the same shapes; default 32)")


def data_from_args(args: argparse.Namespace, role: str) -> list:
    """``--calib``/``--holdout`` paths plus the loader scripts and image folders of ``role``
    ("calibration" or "holdout"), in that order; empty when none was given.

    Raises:
        ConfigError: a malformed loader spec or --preprocess text, or --preprocess without images.
    """
    from fp16guard.errors import ConfigError
    from fp16guard.io.loaders import ImageFolder, LoaderScript

    calib = role == "calibration"
    paths = list((args.calib if calib else args.holdout) or [])
    scripts = args.data_loader_script if calib else args.holdout_loader_script
    images = args.calib_images if calib else args.holdout_images
    if args.preprocess and not (args.calib_images or args.holdout_images):
        raise ConfigError("--preprocess was given without --calib-images or --holdout-images; expected it with an image folder")
    return [*paths, *(LoaderScript.parse(s) for s in scripts), *(ImageFolder.from_spec(d, args.preprocess) for d in images)]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``convert`` command."""
    p = sub.add_parser(
        "convert",
        help="convert a model to mixed precision and verify it, in this process (no server, no store)",
        usage="%(prog)s MODEL (--calib PATH... | --data-loader-script FILE.py[:FUNC] | --calib-images DIR) [--holdout ...] -o OUT.onnx [options]",
        description=(
            "Measure every activation of MODEL on the calibration data, find the smallest FP32 set by cost that passes the gate there "
            "(all-FP16 first), build the mixed-precision model, verify it against FP32 on the holdout data and write it to OUT when verified. "
            "Runs in this process: no Prefect server, no store, no cache (fp16guard run does those). Without --holdout, the "
            "last fifth of the calibration data is held out (the summary says so)."
        ),
    )
    p.add_argument("model", nargs="?", help="FP32 ONNX model (before or after the options)")
    p.add_argument("--calib", nargs="+", default=None, metavar="PATH", help="calibration .npz files, folders, globs or Polygraphy JSON (or --data-loader-script / --calib-images)")
    p.add_argument("--holdout", nargs="+", default=None, metavar="PATH", help="holdout data for verification (same formats, or --holdout-loader-script / --holdout-images); default: split from the calibration data")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the verified artifact, e.g. model.fp16.onnx (not written when rejected)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse before any work)")
    p.add_argument("--allow-overlap", action="store_true", help="accept holdout data that shares files or content with the calibration data; the verdict then says 'not independent'")
    p.add_argument("--workdir", metavar="DIR", help="keep statistics, plan.json, verification.json and the candidate in DIR (default: a temporary folder, removed when OUT is written)")
    add_data_source_arguments(p)
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
    from fp16guard.errors import DataError

    calib, holdout = data_from_args(args, "calibration"), data_from_args(args, "holdout")
    if not calib:
        raise DataError("no calibration data given; expected --calib PATH..., --data-loader-script FILE.py[:FUNC] or --calib-images DIR")
    result = convert(
        model,
        calib,
        holdout or None,
        shard_samples=args.shard_samples,
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
        plan_options={"repair_parallel": args.repair_parallel},
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
