"""``fp16guard run``: the whole flow on one model version.

Exit status: 0 verified, 1 verification failed (run kept, marked rejected), 2 bad input,
3 environment failure (no Prefect server answers; see :mod:`fp16guard.cli.server`).
With ``--json`` the last line on stdout is a JSON object with at least ``run_dir`` and ``passed``
(and ``repair``: the repair outcome, e.g. ``repaired``, null when repair did not run;
``headline``: the verdict's first line; ``fp16_share``: the FP16 share of the estimated FLOPs and
of the compute nodes, ``share_flops`` in 0..1; ``fp32_nodes`` of ``nodes_total``;
``speed_verdict``; ``release_gate``: the release settings' judgement).
"""

from __future__ import annotations

import argparse
import sys

from fp16guard.cli.common import add_model_version, add_plan_arguments, add_store_argument


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``run`` and ``demo``'s pass-through options."""
    add_store_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    p.add_argument("--verbose", "-v", action="store_true", help="show Prefect's logs on the console")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` command."""
    p = sub.add_parser(
        "run",
        help="calibrate, plan, build and verify a model; publish the run to the store",
        usage="%(prog)s MODEL --calib PATH... --holdout PATH... --name NAME --model-version V [options]  (or --data-loader-script/--holdout-loader-script, --calib-images/--holdout-images)",
        description=(
            "Measure every activation of MODEL on the calibration data, find the smallest FP32 set by cost that passes the gate there "
            "(all-FP16 first), build the mixed-precision model and verify it against FP32 on the holdout data, as a Prefect flow; the run is "
            "stored (verified or rejected) and the first verified run of a version is released. MODEL may come before or "
            "after the options. Uses the Prefect server at PREFECT_API_URL, else a shared local one (fp16guard server)."
        ),
    )
    p.add_argument("model", nargs="?", help="FP32 ONNX model (before or after the options)")
    p.add_argument("--calib", nargs="+", default=None, metavar="PATH", help="calibration .npz files, folders, globs or Polygraphy JSON, local or at an fsspec URL (s3://bucket/prefix; each worker reads its own shards) (or --data-loader-script / --calib-images)")
    p.add_argument("--holdout", nargs="+", default=None, metavar="PATH", help="holdout data for verification (same formats, or --holdout-loader-script / --holdout-images)")
    p.add_argument("--name", required=True, help="model name in the store")
    add_model_version(p, required=True)
    from fp16guard.cli.commands.convert import add_data_source_arguments

    add_data_source_arguments(p)
    add_plan_arguments(p)
    p.add_argument("--providers", nargs="+", default=[], metavar="EP", help="onnxruntime providers for statistics and verification, e.g. CUDAExecutionProvider (falls back to CPU with a message); default auto: CUDA when a GPU and onnxruntime-gpu are present, else CPU")
    p.add_argument("--profile-batches", nargs="+", type=int, default=None, metavar="N", help="batch sizes to time FP32, the artifact and all-FP16 at (default: the calibration shard's and 32 when the batch is dynamic; GPU only)")
    p.add_argument("--no-profile", action="store_true", help="do not time the artifact")
    p.add_argument("--trt-mode", choices=["auto", "strong", "weak"], default="auto", help="TensorRT typing mode (--backend tensorrt; default auto: by installed version)")
    p.add_argument("--trt-workspace", type=int, default=4096, metavar="MIB", help="TensorRT builder workspace limit in MiB (default 4096)")
    p.add_argument("--repair-max-iterations", type=int, default=8, metavar="N", help="repair: most rebuild-and-check iterations (0-100, default 8)")
    p.add_argument("--repair-max-seconds", type=float, default=1200.0, metavar="S", help="repair: no new check of the search starts after S seconds (default 1200)")
    p.add_argument("--promote", action="store_true", help="release this run even if the version already has a release")
    p.add_argument("--allow-overlap", action="store_true", help="accept a holdout that shares files or contents with the calibration data (refused by default); the verdict then says 'not independent'")
    p.add_argument("--min-fp16-share", type=float, default=0.0, metavar="F", help="release gate: do not release a verified run whose FP16 share of the estimated FLOPs is below F (0..1, e.g. 0.5; default 0: off)")
    p.add_argument("--min-speedup", type=float, default=None, metavar="X", help="release gate: do not release a verified run whose artifact is less than X times as fast as FP32 at the largest profiled batch (GPU profile only; without one it is not judged; default off)")
    add_execution_arguments(p)
    add_run_arguments(p)
    p.set_defaults(func=main)


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    """Task runner and shard-group options (``RunParameters.execution``; results never depend on them)."""
    g = p.add_argument_group("task runner")
    g.add_argument("--task-runner", choices=("threads", "dask", "dask-cuda"), default="threads", help="threads (default): shard groups in this process; dask: on a Dask cluster (pip install 'fp16guard[dask]'), local or at --dask-address; dask-cuda: one Dask worker per visible GPU, each pinned to its device (pip install 'fp16guard[dask-cuda]'). Statistics, holdout verification and the GPU profile fan out on it")
    g.add_argument("--dask-address", metavar="ADDR", help="scheduler of an existing Dask (or dask-cuda) cluster, e.g. tcp://10.0.0.5:8786 (default: a local cluster started for the run)")
    g.add_argument("--workers", type=int, metavar="N", help="threads: shard groups at once (default: CPUs, at most 4); local Dask cluster: worker processes (default: CPUs, at most 4); dask-cuda: GPUs used, one worker each (default: all visible)")
    g.add_argument("--group-samples", type=int, metavar="N", help="samples of calibration data per statistics task (default 256; each shard is still cached on its own)")
    g.add_argument("--group-bytes", type=int, metavar="B", help="bytes of shard files per statistics task at most (default 256 MiB)")


def parse_gates(specs: list[str]) -> dict[str, dict]:
    """``--gate`` values (``OUTPUT=KIND[:PARAM][@MIN]``) as ``VerifySettings.output_gates``.

    Raises:
        ConfigError: a value is not of that form (bounds are checked by the settings model).
    """
    from fp16guard.errors import ConfigError

    gates: dict[str, dict] = {}
    for spec in specs:
        name, sep, rest = spec.rpartition("=")
        kind, _, minimum = rest.partition("@")
        kind, _, param = kind.partition(":")
        try:
            if not sep or not name or kind not in ("numeric", "top1", "topk", "threshold", "iou", "custom") or (param and kind not in ("topk", "threshold", "iou", "custom")):
                raise ValueError
            gate: dict = {"gate": kind}
            if kind == "custom":
                if not param:
                    raise ValueError
                gate["metric"] = param  # module:factory (its own colon survives the partition)
            elif param:
                gate["k" if kind == "topk" else "threshold"] = int(param) if kind == "topk" else float(param)
            if minimum:
                gate["min_agreement"] = float(minimum)
        except ValueError:
            raise ConfigError(f"--gate {spec!r} is not accepted; expected OUTPUT=KIND[:PARAM][@MIN] with KIND numeric, top1, topk[:K], threshold[:T], iou[:T] or custom:MODULE:FACTORY, e.g. probs=top1, mask=iou:0.5@0.9 or y=custom:mypkg.gates:make") from None
        gates[name] = gate
    return gates


def parameters_from_args(args: argparse.Namespace):
    """Build and validate :class:`RunParameters`; a bad value raises ConfigError (exit 2)."""
    from fp16guard.cli.common import model_version, take_model_argument
    from fp16guard.settings import RunParameters, parse_parameters

    model = take_model_argument(args)
    calib, holdout = data_sources(args, model)
    return parse_parameters(
        RunParameters,
        {
            "model": model,
            "calib": calib,
            "holdout": holdout,
            "name": args.name,
            "version": model_version(args),
            "store": args.store,
            "backend": args.backend,
            "batch_size": args.batch_size,
            "providers": [p for p in args.providers if p != "auto"],
            "profile_batches": [] if args.no_profile else args.profile_batches,
            "tensorrt_mode": args.trt_mode,
            "tensorrt_workspace_mib": args.trt_workspace,
            "plan": {
                "threshold": args.threshold,
                "force_fp32_nodes": args.force_fp32_nodes,
                "force_fp32_ops": args.force_fp32_ops,
                "force_fp16_nodes": args.force_fp16_nodes,
                "repair": not getattr(args, "no_repair", False),
                "repair_max_iterations": getattr(args, "repair_max_iterations", 8),
                "repair_max_seconds": getattr(args, "repair_max_seconds", 1200.0),
                "repair_parallel": getattr(args, "repair_parallel", 1),
                "strategy": getattr(args, "strategy", "auto"),
            },
            "verify": {"max_rel_error": args.max_rel_error, "min_cosine": args.min_cosine, "output_gates": parse_gates(getattr(args, "gate", []))},
            "promote": args.promote,
            "allow_overlap": args.allow_overlap,
            "release": {"min_fp16_share": getattr(args, "min_fp16_share", 0.0), "min_speedup": getattr(args, "min_speedup", None)},
            "execution": {
                # an address means a Dask cluster: dask, unless dask-cuda was named
                "task_runner": "dask" if getattr(args, "dask_address", None) and getattr(args, "task_runner", "threads") == "threads" else getattr(args, "task_runner", "threads"),
                "dask_address": getattr(args, "dask_address", None),
                "workers": getattr(args, "workers", None),
                "group_samples": getattr(args, "group_samples", None),
                "group_bytes": getattr(args, "group_bytes", None),
            },
        },
    )


def data_sources(args: argparse.Namespace, model: str) -> tuple[list[str], list[str]]:
    """Calibration and holdout locations for :class:`RunParameters`: ``--calib``/``--holdout``
    paths as given, plus loader scripts and image folders materialised as content-addressed
    ``.npz`` shards under :func:`fp16guard.io.loaders.default_data_root` (``STORE/.data`` for a
    local store), so the flow caches and records them like any shard folder. Nothing is written
    there unless every source reads cleanly.

    Raises:
        DataError, ConfigError, ModelError: a missing set, a bad source (one line), or a model
            that does not load (sources are checked against its inputs).
    """
    from fp16guard.cli.commands.convert import data_from_args
    from fp16guard.errors import DataError

    calib, holdout = data_from_args(args, "calibration"), data_from_args(args, "holdout")
    if not calib:
        raise DataError("no calibration data given; expected --calib PATH..., --data-loader-script FILE.py[:FUNC] or --calib-images DIR")
    if not holdout:
        raise DataError("no holdout data given; expected --holdout PATH..., --holdout-loader-script FILE.py[:FUNC] or --holdout-images DIR")
    from fp16guard.io.loaders import is_source

    if not any(is_source(d) for d in [*calib, *holdout]):
        return calib, holdout
    from fp16guard.io.loaders import SHARD_SAMPLES, default_data_root, resolve_sources
    from fp16guard.store.runs import resolve_root
    from fp16guard.io.model import input_specs
    from fp16guard.preflight import load_checked_graph

    specs = input_specs(load_checked_graph(model))
    calib, holdout = resolve_sources([("calibration", calib), ("holdout", holdout)], specs, default_data_root(resolve_root(args.store)), args.shard_samples or SHARD_SAMPLES)
    return calib, holdout


def main(args: argparse.Namespace) -> int:
    """Run the flow and report; see the module docstring for exit statuses."""
    params = parameters_from_args(args)
    return execute(params, as_json=args.json, verbose=args.verbose)


def execute(params, as_json: bool = False, verbose: bool = False) -> int:
    """Preflight-check ``params``, run the flow in this process and print the outcome.

    Bad input found before the flow starts never creates a run; the flow itself removes its
    staging folder when it meets bad input later, and this process's staging folders are removed
    when the run stops in any other way (Ctrl-C, SIGTERM, a lost server). Before the flow starts,
    flow runs a killed run left RUNNING on this host are marked Crashed (:func:`mark_orphaned_runs`).
    Prefect's own warnings and errors stay off the terminal unless ``verbose``.
    """
    from fp16guard.preflight import preflight

    preflight(params)
    quiet_prefect_console(verbose)
    from fp16guard.cli.server import ensure_api

    api_url, local = ensure_api()  # EnvironmentFailure (exit 3) when no server answers
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    from fp16guard.errors import VerificationFailed
    from flows.calibrate import calibrate

    seen: dict = {}

    def _announce(flow, flow_run, state) -> None:
        chain_sigterm()  # SIGTERM during the flow also stops workers waiting for cache locks
        # Printed as the flow starts, so the user can follow the run in the UI while it works.
        ui = PREFECT_UI_URL.value()
        seen["flow_run_url"] = f"{ui.rstrip('/')}/runs/flow-run/{flow_run.id}" if ui else None
        if seen["flow_run_url"]:
            print(f"flow run: {seen['flow_run_url']}", flush=True)

    # Prefect reads its environment once, at import: the local server is installed as a setting.
    from fp16guard.cli.watchdog import ServerWatchdog, chain_sigterm, interruptible

    # The watchdog turns a server lost mid-run into exit 3 within about a minute (issue 13);
    # Ctrl-C also stops workers waiting for cache locks. An interrupt or a lost server can land
    # between two tasks, where the flow's own clean-up never learnt its staging folder: this
    # process's staging folders go here in any case, and before the watchdog's hard exit.
    def _clean() -> None:
        discard_staged(params)

    # Prefect's own warnings and errors (a lost server: one per background service) are kept off
    # the terminal; the first one's cause joins fp16guard's one line.
    from fp16guard.cli.prefect_log import PrefectErrorFold

    fold = PrefectErrorFold(enabled=not verbose)
    with temporary_settings({PREFECT_API_URL: api_url} if local else {}), interruptible(), fold, ServerWatchdog(api_url, on_exit=_clean, cause=fold.first_cause) as watchdog:
        mark_orphaned_runs(params.store)
        try:
            result = calibrate.with_options(on_running=[_announce])(params)
        except VerificationFailed as exc:
            result = {"passed": False, "status": "rejected", "reason": exc.reason, **exc.report.get("_run", {})}
        except BaseException as exc:
            watchdog.check(exc)  # ServerLost (exit 3) when the server went away
            raise
        finally:
            _clean()
    summary = {k: v for k, v in result.items() if not k.startswith("_")}
    if seen.get("flow_run_url"):
        summary["flow_run_url"] = seen["flow_run_url"]
    print_summary(summary)
    if as_json:
        from fp16guard.records import dumps

        # Strict JSON: an unbounded worst error is the string "inf", never Infinity or a number.
        print(dumps(summary))
    return 0 if summary.get("passed") else 1


def mark_orphaned_runs(store: str) -> None:
    """Break the store's stale cache locks, and mark Crashed the fp16guard flow runs left RUNNING
    on the server whose process ran on this host and is gone (a run killed with SIGKILL cannot
    say it ended; :mod:`tasks.orphans`), one line on stdout each. Never stops the run: a store or
    server error here is left to the flow to meet."""
    from fp16guard.store.runs import resolve_root
    from tasks.orphans import sweep_orphaned_runs, sweep_stale_locks

    try:
        sweep_stale_locks(resolve_root(store))
    except Exception:  # noqa: BLE001 — see docstring
        pass
    try:
        marked = sweep_orphaned_runs()
    except Exception:  # noqa: BLE001 — see docstring
        return
    for run_id, name, process in marked:
        print(f"flow run {name} ({run_id}) marked Crashed: its process (pid {process['pid']} on {process['host']}) is gone", flush=True)


def discard_staged(params) -> None:
    """Remove the staging folders this process left for ``params``' model version (and an empty
    ``.staging/``); see :meth:`fp16guard.store.runs.Store.discard_staged`. Never raises: it runs
    while a run is being stopped, and the stop's own one line must stay the only one."""
    try:
        from fp16guard.store.runs import open_store

        open_store(params.store).discard_staged(params.name, params.version)
    except Exception:  # noqa: BLE001 — a store that fails here failed the run already, and said so
        pass


def print_summary(result: dict) -> None:
    """Human summary on stdout (the JSON line, when asked, comes after it). The first line is the
    verdict (:func:`fp16guard.report.verdict.headline`): it warns when little arithmetic runs in
    FP16 or when a GPU profile shows no speed-up."""
    from fp16guard.report.verdict import headline, share_text

    first = result.get("headline") or headline(bool(result.get("passed")), result.get("reason"), result.get("fp16_share"), result.get("speed_verdict"))
    print(first)
    worst = result.get("worst_rel_error")
    fp32, total = result.get("fp32_nodes"), result.get("nodes_total")
    speed_verdict = result.get("speed_verdict") or {}
    rows = [
        ("run", result.get("run_dir")),
        ("status", result.get("status")),
        ("release", f"{'released' if result.get('released') else 'not released'} ({result.get('release_reason')})" if "released" in result else None),
        ("fp32 nodes", f"{fp32} of {total}" if fp32 is not None and total else fp32),
        ("fp16 share", share_text(result.get("fp16_share"))),
        ("repair", (result.get("repair_summary") or "").removeprefix("repair: ") or result.get("repair")),
        ("worst relative error", f"{worst:.3g}" if isinstance(worst, (int, float)) else worst),
        ("speed", result.get("speed")),
        ("speed verdict", speed_verdict.get("text") if speed_verdict.get("judged") else None),
        ("report", result.get("report")),
        ("flow run", result.get("flow_run_url")),
    ]
    for label, value in rows:
        if value is not None:
            print(f"  {label + ':':22s}{value}")
    if not result.get("passed"):
        # Range is handled by the plan; what still fails is usually precision (e.g. FP16-rounded
        # inputs of an FP32 node whose output is huge): widen the FP32 region.
        print("  hint: lower --threshold (e.g. 1000) or keep nodes in FP32 with --force-fp32-nodes / --force-fp32-ops; the report shows which tensors are large")


def quiet_prefect_console(verbose: bool) -> None:
    """Keep Prefect's console logs (and their tracebacks) off the terminal unless ``verbose``.

    Logs still reach the Prefect API, so the UI shows them. Must run before prefect is imported.
    Side effect: sets ``PREFECT_LOGGING_HANDLERS_*_LEVEL`` (and, for the embedded server,
    ``PREFECT_SERVER_ANALYTICS_ENABLED=false``) in this process's environment unless already set.
    """
    import os

    if verbose or "prefect" in sys.modules:
        return
    for handler in ("CONSOLE", "CONSOLE_FLOW_RUNS", "CONSOLE_TASK_RUNS"):
        os.environ.setdefault(f"PREFECT_LOGGING_HANDLERS_{handler}_LEVEL", "CRITICAL")
    # The local server fp16guard starts (no PREFECT_API_URL) sends no telemetry; a configured
    # server keeps its own setting.
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
