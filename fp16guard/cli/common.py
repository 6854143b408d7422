"""What every ``fp16guard`` command shares: the exit-status text, the model-version option, and
recovering a model path that a many-valued option swallowed.

No heavy imports here: ``fp16guard stats`` must start fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["EXIT_STATUS_HELP", "add_model_version", "add_plan_arguments", "model_version", "take_model_argument"]

#: Appended to every command's ``--help``.
EXIT_STATUS_HELP = """\
exit status:
  0  success (run: verified)
  1  run: verification failed (the run is kept, marked rejected); verify-store: a mismatch;
     server status: no local server runs
  2  bad input: one line on stderr saying what was wrong and what was expected; nothing written
  3  environment failure: no Prefect server answers or starts, or the store cannot be used"""


def add_store_argument(p: argparse.ArgumentParser) -> None:
    """Add ``--store`` (the store root), with the same default and help on every command."""
    p.add_argument("--store", help="store root (folder or fsspec URL); default $FP16GUARD_STORE, else ./fp16guard-store")


def add_run_selection(p: argparse.ArgumentParser) -> None:
    """Add what names one stored run: NAME, ``--model-version``, ``--run ID`` and ``--store``."""
    p.add_argument("name", help="model name")
    add_model_version(p, required=True, positional_alias=True)
    p.add_argument("--run", dest="run_id", metavar="ID", help="a run id (default: the current release)")
    add_store_argument(p)


def add_model_version(p: argparse.ArgumentParser, required: bool, positional_alias: bool = False) -> None:
    """Add ``--model-version V``: the one spelling of a model's version in every command.

    Earlier spellings still parse but are not shown: ``--version`` (which at the top level is
    fp16guard's own version) and, where ``positional_alias``, a VERSION after NAME. Read the
    value with :func:`model_version`.

    Args:
        p: the command's parser.
        required: the command needs a version (checked by :func:`model_version`).
        positional_alias: also accept the version as an optional second positional argument.
    """
    p.add_argument(
        "--model-version", dest="model_version", metavar="V",
        help="model version in the store (letters, digits, '.', '_', '-')" + ("; required" if required else "; default: every version"),
    )
    p.add_argument("--version", dest="model_version", help=argparse.SUPPRESS)
    if positional_alias:
        p.add_argument("model_version_positional", nargs="?", help=argparse.SUPPRESS)
    p.set_defaults(_model_version_required=required)


def model_version(args: argparse.Namespace) -> str | None:
    """The model version given in any accepted spelling.

    Raises:
        ConfigError: it is required and missing, or given twice with different values.
    """
    from fp16guard.errors import ConfigError

    flag = getattr(args, "model_version", None)
    positional = getattr(args, "model_version_positional", None)
    if flag is not None and positional is not None and flag != positional:
        raise ConfigError(f"model version given twice ({positional!r} and --model-version {flag!r}); expected one")
    value = flag if flag is not None else positional
    if value is None and getattr(args, "_model_version_required", False):
        raise ConfigError(f"`fp16guard {args.command}` needs --model-version V; expected the model's version in the store, e.g. --model-version 1")
    return value


def take_model_argument(args: argparse.Namespace, list_options: tuple[str, ...] = ("calib", "holdout")) -> str:
    """Return the positional MODEL, recovering it from a many-valued option that swallowed it.

    ``fp16guard run --calib a.npz b.npz model.onnx --holdout h/`` gives ``model.onnx`` to
    ``--calib`` (it takes every value up to the next option). A trailing ``.onnx`` value of such
    an option is the model when no MODEL was given: it is moved back (an ``.onnx`` file is
    never data).

    Args:
        args: the parsed arguments (``args.model`` may be None).
        list_options: the ``nargs="+"`` options that may have swallowed it.

    Raises:
        ConfigError: no model was given, or two were.
    """
    from fp16guard.errors import ConfigError

    for option in list_options:
        values = getattr(args, option, None) or []
        if len(values) > 1 and Path(values[-1]).suffix.lower() == ".onnx":
            if args.model is not None:
                raise ConfigError(f"--{option.replace('_', '-')} got the model file {values[-1]!r} and MODEL is {args.model!r}; expected one FP32 .onnx model")
            args.model = values.pop()
    if not args.model:
        raise ConfigError(f"`fp16guard {args.command}` needs MODEL, an FP32 .onnx file; expected e.g. fp16guard {args.command} model.onnx --calib calib/ ...")
    return args.model


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The plan and gate options ``run`` and ``convert`` share (same names, same defaults)."""
    from fp16guard.backends.registry import DEFAULT_BACKEND, backend_names

    p.add_argument("--threshold", type=float, default=10000.0, help="max |x| above which a node stays FP32 (0 < T <= 65504; default 10000)")
    p.add_argument("--backend", choices=list(backend_names()), default=DEFAULT_BACKEND, help=f"what to build (default {DEFAULT_BACKEND})")
    p.add_argument("--batch-size", type=int, help="samples per inference call; larger shards run in slices")
    p.add_argument("--force-fp32-nodes", metavar="REGEX", help="nodes whose name matches stay FP32")
    p.add_argument("--force-fp32-ops", nargs="+", default=[], metavar="OP", help="op types that stay FP32 (each must be in the model)")
    p.add_argument("--force-fp16-nodes", metavar="REGEX", help="nodes whose name matches are built in FP16 regardless")
    p.add_argument("--no-repair", action="store_true", help="do not search the FP32 set on calibration data (default: the all-FP16 build first, pin where the error comes from until the gate passes, give back what is not needed)")
    p.add_argument("--repair-parallel", type=int, default=1, metavar="N", help="candidate checks of the FP32-set search run at once (threads; default 1). The plan is the same for any N: the search consumes the results in its one-at-a-time order")
    p.add_argument(
        "--strategy",
        choices=("auto", "pin", "fold"),
        default="auto",
        help="pin: keep FP32 every node the rules name; fold: first fold power-of-two scales into the weights where exact; auto (default): fold when it keeps fewer Conv/Gemm/MatMul nodes FP32, else pin",
    )
    p.add_argument("--max-rel-error", type=float, default=0.02, help="largest allowed max error relative to the output's scale (default 0.02)")
    p.add_argument("--min-cosine", type=float, default=0.999, help="smallest allowed cosine similarity (default 0.999)")
    p.add_argument(
        "--gate", action="append", default=[], metavar="OUTPUT=KIND[:PARAM][@MIN]",
        help="judge one output by what its user needs instead of the numeric figures (repeatable): top1, topk:K, threshold:T, iou:T (a map cut at T), custom:MODULE:FACTORY (a Metric of yours), with @MIN the fraction that must agree or the smallest IoU (default 1.0); e.g. --gate probs=top1 --gate mask=iou:0.5@0.9",
    )
