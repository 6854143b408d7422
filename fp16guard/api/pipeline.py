"""``fp16guard.convert``: the whole conversion in this process, with no server and no Prefect.

It calls the same library functions, in the same order, as the flow's tasks
(``flows/calibrate.py`` and ``tasks/*.py``, which are thin wrappers over them):

==========================  =====================================================================
flow task                   library call made here
==========================  =====================================================================
preflight (``run``)         :mod:`fp16guard.preflight` (model, settings, data, independence)
``discover``                :func:`fp16guard.io.shards.discover_shards`
``shard_stats_task``        :class:`fp16guard.stats.collect.StatsSession` (one session, every shard)
``reduce_stats_task``       :func:`fp16guard.stats.collect.write_stats_files`
``plan_task``               :func:`fp16guard.plan.strategies.plan_model`, then
                            :func:`fp16guard.plan.repair.repair_plan` on calibration data
``build_mixed_onnx_task``   :func:`fp16guard.plan.strategies.model_for_plan`,
                            :func:`fp16guard.graph.convert.to_mixed_precision`
``build_backend_task``      ``get_backend(name, providers).build`` (:mod:`fp16guard.backends.registry`)
``verify_task``             ``Backend.verify`` on the holdout
``profile_task``            ``Backend.profile`` (GPU with real FP16 kernels only)
==========================  =====================================================================

What it does not do, by design: cache, store, release, lineage, UI. ``fp16guard run`` is the
orchestrated path for those.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fp16guard.api.result import Result
from fp16guard.errors import ConfigError, DataError, UserError, VerificationFailed

__all__ = ["HOLDOUT_FRACTION", "convert", "split_holdout"]

#: Share of the calibration data kept back as holdout when no holdout is given (shards when
#: there are several, else samples of the one shard); at least one shard or sample each side.
HOLDOUT_FRACTION = 0.2

PathLike = str | os.PathLike


def convert(
    model: PathLike | Any,
    calib: PathLike | Sequence[PathLike] | Any,
    holdout: PathLike | Sequence[PathLike] | Any | None = None,
    *,
    gate: Mapping[str, str | Mapping[str, Any]] | None = None,
    strategy: str = "auto",
    providers: Sequence[str] | None = None,
    output: PathLike | None = None,
    overwrite: bool = False,
    threshold: float = 10000.0,
    max_rel_error: float = 0.02,
    min_cosine: float = 0.999,
    force_fp32_nodes: str | None = None,
    force_fp32_ops: Sequence[str] = (),
    force_fp16_nodes: str | None = None,
    repair: bool = True,
    plan_options: Mapping[str, Any] | None = None,
    verify_options: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    backend: str = "onnxruntime",
    backend_options: Mapping[str, Any] | None = None,
    profile: bool = True,
    profile_batches: Sequence[int] | None = None,
    allow_overlap: bool = False,
    workdir: PathLike | None = None,
    keep_workdir: bool | None = None,
    shard_samples: int | None = None,
) -> Result:
    """Measure, plan, build and verify a mixed-precision model, in this process.

    Args:
        model: the FP32 ONNX model: a path (external-data files beside it), or an
            ``onnx.ModelProto`` (saved into the work folder first).
        calib: calibration data: an ``.npz`` file, a folder of them, a glob, a Polygraphy JSON
            inputs file, or a list of these; or a data source (:mod:`fp16guard.io.loaders`): a
            Polygraphy data-loader script (``"loader.py:load_data"`` or
            ``LoaderScript(...)``), a callable returning feed dicts ``{input name: array}``, an
            iterable of feed dicts, or an ``ImageFolder(...)``. Sources are materialised as
            ``.npz`` shards in the work folder first.
        holdout: holdout data for verification (same forms). None: the last
            :data:`HOLDOUT_FRACTION` of the calibration shards (or of the samples of a single
            shard) are held out, and the result says "holdout split from calibration".
        gate: per output, a gate other than the numeric one, e.g. ``{"probs": "top1"}`` or
            ``{"mask": {"gate": "threshold", "threshold": 0.5, "min_agreement": 0.99}}``
            (:class:`fp16guard.settings.OutputGate`).
        strategy: ``"auto"`` (default), ``"pin"`` or ``"fold"`` (:mod:`fp16guard.plan.strategies`).
        providers: onnxruntime execution providers, e.g. ``["CUDAExecutionProvider"]``; None:
            CUDA when a GPU and onnxruntime-gpu are present, else the CPU.
        output: where to write the artifact (atomically). Written only when it is verified: a
            rejected candidate stays in the work folder.
        overwrite: replace an existing ``output`` (default False: an existing file is refused
            before any work).
        threshold: max |x| above which a node stays FP32 (0 < T <= 65504; default 10000).
        max_rel_error: largest allowed max error relative to an output's scale (default 0.02).
        min_cosine: smallest allowed cosine similarity per output (default 0.999).
        force_fp32_nodes: regular expression; nodes whose name matches stay FP32.
        force_fp32_ops: op types that stay FP32 (each must be in the model).
        force_fp16_nodes: regular expression; nodes whose name matches are built in FP16.
        repair: check the plan on calibration data and pin nodes until it passes (default True).
        plan_options: any other :class:`fp16guard.settings.PlanSettings` field (e.g.
            ``{"repair_max_seconds": 60}``).
        verify_options: any other :class:`fp16guard.settings.VerifySettings` field.
        batch_size: samples per inference call; default the whole shard.
        backend: a registered backend name (:mod:`fp16guard.backends.registry`; default
            ``"onnxruntime"``).
        backend_options: backend-specific build options (TensorRT: ``tensorrt_mode``,
            ``tensorrt_workspace_mib``, ``timing_cache_dir``).
        profile: time FP32, the artifact and all-FP16 when verification ran real FP16 kernels
            on a GPU (default True; nothing is timed on the CPU).
        profile_batches: batch sizes to time at; default the calibration shard's batch, and 32
            when the batch is dynamic.
        allow_overlap: accept a holdout that shares files or content with the calibration data;
            the verdict then says "not independent".
        workdir: folder for ``stats.parquet``, ``plan.json``, the candidate and
            ``verification.json``; default a new temporary folder.
        keep_workdir: keep the temporary work folder. Default: removed when the verified
            artifact was written to ``output``, kept otherwise (it holds the artifact, or the
            rejected candidate to inspect). A ``workdir`` you give is never removed.
        shard_samples: samples per shard when a data source is materialised (default
            :data:`fp16guard.io.loaders.SHARD_SAMPLES`).

    Returns:
        The :class:`Result` (``print(result)`` gives a readable summary). A rejected artifact is
        a result with ``verified=False``, not an exception.

    Raises:
        ModelError, DataError, ConfigError: bad input, found before any forward pass where it
            can be; nothing is written to ``output``, and a temporary work folder is removed.

    Side effects:
        Writes the work folder and, when verified, ``output``. Runs onnxruntime sessions on
        ``providers``. Imports no Prefect and needs no server.
    """
    started = time.monotonic()
    from fp16guard.backends.registry import get_backend
    from fp16guard.settings import PlanSettings, VerifySettings, parse_parameters

    plan_settings = parse_parameters(
        PlanSettings,
        {
            "threshold": threshold,
            "force_fp32_nodes": force_fp32_nodes,
            "force_fp32_ops": list(force_fp32_ops or []),
            "force_fp16_nodes": force_fp16_nodes,
            "repair": repair,
            "strategy": strategy,
            **dict(plan_options or {}),
        },
    )
    verify_settings = parse_parameters(
        VerifySettings,
        {"max_rel_error": max_rel_error, "min_cosine": min_cosine, "output_gates": dict(gate or {}), **dict(verify_options or {})},
    )
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ConfigError(f"batch_size {batch_size!r} is not accepted; expected a positive integer or None")
    from fp16guard.io.loaders import SHARD_SAMPLES

    shard_samples = SHARD_SAMPLES if shard_samples is None else shard_samples
    if not isinstance(shard_samples, int) or isinstance(shard_samples, bool) or shard_samples < 1:
        raise ConfigError(f"shard_samples {shard_samples!r} is not accepted; expected a positive integer (samples per materialised shard)")
    target = _check_output(output, overwrite)
    chosen = get_backend(backend, [p for p in (providers or []) if p != "auto"] or None)
    chosen.preflight()

    temporary = workdir is None
    work = Path(tempfile.mkdtemp(prefix="fp16guard-convert-")) if temporary else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = _convert(
            model, calib, holdout, work, target, overwrite, plan_settings, verify_settings, chosen,
            batch_size, dict(backend_options or {}), profile, profile_batches, allow_overlap, started, shard_samples,
        )
    except (UserError, KeyboardInterrupt):
        if temporary:
            shutil.rmtree(work, ignore_errors=True)  # bad input leaves nothing behind
        raise
    remove = temporary and (keep_workdir is False or (keep_workdir is None and result.output is not None))
    if remove:
        shutil.rmtree(work, ignore_errors=True)
        result = _replace(result, workdir=None)
    return result


def _replace(result: Result, **changes: Any) -> Result:
    from dataclasses import replace

    return replace(result, **changes)


def _paths(value: PathLike | Sequence[PathLike]) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def _check_output(output: PathLike | None, overwrite: bool) -> Path | None:
    """The output path, refused before any work when it cannot be written as asked.

    Raises:
        ConfigError: it is a folder, or it exists and ``overwrite`` is False.
    """
    if output is None:
        return None
    target = Path(output)
    if target.is_dir():
        raise ConfigError(f"output {output} is a folder; expected a file path, e.g. {target / 'model.fp16.onnx'}")
    if target.exists() and not overwrite:
        raise ConfigError(f"output {output} exists; expected a new path, or overwrite=True (CLI: --overwrite) to replace it")
    if target.parent.exists() and not target.parent.is_dir():
        raise ConfigError(f"output {output}: {target.parent} is not a folder")
    return target


def _convert(model, calib, holdout, work: Path, target, overwrite, plan_settings, verify_settings, backend, batch_size, options, profile, profile_batches, allow_overlap, started, shard_samples=None) -> Result:
    from fp16guard.io.model import input_specs, save_model
    from fp16guard.io.shards import discover_shards
    from fp16guard.preflight import check_data, check_settings, load_checked_graph

    model_path = _model_file(model, work)
    graph = load_checked_graph(model_path)
    check_settings(graph, plan_settings, verify_settings)
    specs = input_specs(graph)
    # Loader scripts, feed dicts and image folders become content-addressed .npz shards here;
    # paths pass through unchanged (fp16guard.io.loaders).
    from fp16guard.io.loaders import SHARD_SAMPLES, resolve_sources

    if calib is None:
        raise DataError("no calibration data given; expected .npz files, folders, globs, Polygraphy JSON, a data loader or an ImageFolder")
    calib, holdout = resolve_sources([("calibration", calib), ("holdout", holdout)], specs, work / "data", shard_samples or SHARD_SAMPLES)
    calib_refs = discover_shards(_paths(calib), "calibration")
    if holdout is None:
        # Headers first, so a shard that does not fit is reported as such, not as a failed
        # split; values are read once, by check_data below.
        from fp16guard.io.shards import check_layout, peek_shard

        for ref in calib_refs:
            check_layout(ref, peek_shard(ref), specs)
        calib_refs, holdout_refs, holdout_text = split_holdout(calib_refs, specs, work / "split")
    else:
        holdout_refs = discover_shards(_paths(holdout), "holdout")
        holdout_text = "given"
    overlap = check_data(graph, calib_refs, holdout_refs, allow_overlap=allow_overlap)
    notes: list[str] = []
    if overlap:
        notes.append(f"holdout overlaps calibration: {overlap.describe()}")
    del graph

    stats = _statistics(model_path, calib_refs, batch_size, backend.providers, work)
    plan, built_model = _plan_and_model(model_path, stats, calib_refs, plan_settings, verify_settings, batch_size, work)
    plan_dict = plan.to_dict()
    from fp16guard.graph.convert import to_mixed_precision

    mixed = save_model(to_mixed_precision(built_model, plan.fp32_names), work / "model.mixed.onnx")
    share, share_note = _fp16_share(built_model, plan.fp32_names, calib_refs[0], specs)
    if share_note:
        notes.append(share_note)
    del built_model

    from fp16guard.backends.base import BuildRequest
    from fp16guard.records import VerificationReport, write_json

    options = {"tensorrt_mode": "auto", "tensorrt_workspace_mib": 4096, "timing_cache_dir": str(work / "tensorrt-timing"), **options}
    profile_record = None
    try:
        built = backend.build(BuildRequest(str(model_path), str(mixed), plan_dict, str(work), [*calib_refs, *holdout_refs], batch_size, options))
    except VerificationFailed as exc:
        # The engine ignored the plan's FP32 constraints: a rejected result, as the flow records it.
        built = {"name": backend.name, "implementation": backend.implementation, "artifact": None}
        report = {"passed": False, "reason": exc.reason, "outputs": {}, "engine_check": getattr(exc, "violations", [])}
        artifact = mixed
    else:
        artifact = work / built["artifact"]
        report = backend.verify(str(model_path), str(artifact), holdout_refs, verify_settings, batch_size=batch_size)
    if overlap:
        report["independent"] = False
    write_json(work / "verification.json", report)
    verification = VerificationReport.from_dict(report)

    speed = None
    if built.get("artifact") and profile:
        speed, profile_record, why = _profile(backend, model_path, artifact, calib_refs[0], specs, profile_batches, report)
        if why:
            notes.append(why)

    written = None
    if verification.passed and target is not None:
        written = _publish(artifact, target, overwrite)
    elif target is not None:
        notes.append(f"{target} not written: the candidate was rejected")
    return Result(
        verified=bool(verification.passed),
        artifact=written or Path(artifact),
        output=written,
        plan=plan,
        verification=verification,
        fp16_share=share,
        speed=speed,
        profile=profile_record,
        holdout=holdout_text,
        independent=not overlap,
        backend=dict(built),
        workdir=work,
        seconds=time.monotonic() - started,
        notes=tuple(notes),
    )


def _model_file(model, work: Path) -> Path:
    """The model as a file: a path as given; a ``ModelProto`` saved into ``work``."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    import onnx

    if isinstance(model, onnx.ModelProto):
        from fp16guard.io.model import save_model

        return save_model(model, work / "model.onnx")
    raise ConfigError(f"model is a {type(model).__name__}; expected a path to an .onnx file or an onnx.ModelProto")


def split_holdout(calib: Sequence, specs: Sequence, folder: Path) -> tuple[list, list, str]:
    """Hold back part of the calibration data for verification.

    Several shards: the last ``max(1, round(n * HOLDOUT_FRACTION))`` shards (never all). One
    shard: its last ``max(1, samples // 5)`` samples along the batch axis, written with the rest
    as two ``.npz`` files into ``folder`` (inputs without a batch axis go whole into both).

    Args:
        calib: the calibration shards, in order.
        specs: the model's inputs (for the batch axis).
        folder: where a single shard's two parts are written.

    Returns:
        ``(calibration shards, holdout shards, "holdout split from calibration (...)")``.

    Raises:
        DataError: one shard of one sample: nothing to hold back.
    """
    from fp16guard.io.shards import ShardRef, batch_count, load_shard, prepare_feeds

    calib = list(calib)
    if len(calib) >= 2:
        k = min(len(calib) - 1, max(1, round(len(calib) * HOLDOUT_FRACTION)))
        kept, held = calib[:-k], calib[-k:]
        return kept, held, f"holdout split from calibration ({len(held)} of {len(calib)} shards held out: {', '.join(r.name for r in held[:3])}{' ...' if k > 3 else ''})"
    ref = calib[0]
    feeds = prepare_feeds(ref, load_shard(ref), specs)
    total = batch_count(feeds)
    if total < 2:
        raise DataError(
            f"calibration shard {ref.name} holds {total} sample and no holdout was given; expected a holdout (--holdout PATH, Python: holdout=...) "
            "or calibration data of at least 2 samples to split"
        )
    k = max(1, total // 5)
    parts = {"calibration": (0, total - k), "holdout": (total - k, total)}
    folder.mkdir(parents=True, exist_ok=True)
    refs = {}
    for role, (start, stop) in parts.items():
        arrays = {}
        for name, arr in feeds.items():
            axis = feeds.axes.get(name)
            if axis is None:
                arrays[name] = arr
            else:
                index = [slice(None)] * arr.ndim
                index[axis] = slice(start, stop)
                arrays[name] = arr[tuple(index)]
        path = folder / f"{role}.npz"
        np.savez(path, **arrays)
        refs[role] = ShardRef(f"{ref.name}[{start}:{stop}]", str(path))
    text = f"holdout split from calibration (last {k} of {total} samples of {ref.name})"
    return [refs["calibration"]], [refs["holdout"]], text


def _statistics(model_path: Path, calib: Sequence, batch_size: int | None, providers: Sequence[str], work: Path):
    """Per-shard statistics (several one-thread sessions at once, tables in shard order), reduced
    and written as the flow writes them."""
    from fp16guard.progress import Progress
    from fp16guard.stats.collect import write_stats_files
    from fp16guard.stats.parallel import measure_shards

    with Progress(len(calib), "calibration shards") as bar:
        tables, _ = measure_shards(model_path, calib, batch_size=batch_size, providers=list(providers), on_shard=bar.advance)
    return write_stats_files(tables, work / "stats.parquet", work / "shard_stats.parquet")


def _plan_and_model(model_path: Path, stats, calib: Sequence, settings, verify_settings, batch_size: int | None, work: Path):
    """The plan (rules, strategy, repair) as ``tasks/plan.py`` makes it, written as
    ``plan.json``, and the FP32 model it is built from (folded scales replayed as ``tasks/build.py``
    does)."""
    from fp16guard.io import atomic
    from fp16guard.io.model import load_graph, load_model
    from fp16guard.plan.records import Plan
    from fp16guard.plan.repair import repair_plan
    from fp16guard.plan.strategies import model_for_plan, plan_model

    # pin reads the graph only (make_plan scans weights from disk in chunks); fold/auto rewrite
    # weights, so they load them (as the flow's plan task does).
    model = load_graph(model_path) if settings.strategy == "pin" else load_model(model_path)
    data, planned = plan_model(model, stats, settings, weights_dir=model_path.parent)
    plan = Plan.from_dict(data)
    full = load_model(model_path) if settings.repair and settings.strategy == "pin" else planned
    plan = repair_plan(full, plan, list(calib), settings, verify_settings, batch_size, on_step=_show_step)
    del model, planned, full
    atomic.write_json(work / "plan.json", plan.to_dict())
    return plan, model_for_plan(load_model(model_path), plan.to_dict())


def _show_step(step) -> None:
    """Each check of the search as one line on stderr when it is a terminal (a long search says
    which phase and check it is in); nothing in logs and pipes, like the progress bars."""
    import sys

    from fp16guard.report.plan_summary import step_line

    if getattr(sys.stderr, "isatty", lambda: False)():
        sys.stderr.write(step_line(step) + "\n")
        sys.stderr.flush()


def _fp16_share(model, fp32: set[str], sample, specs):
    """The plan's FP16 share of estimated FLOPs (:mod:`fp16guard.plan.cost`), shapes from the
    first calibration shard. Returns ``(share or None, note or None)``: the cost model is an
    estimate beside the verdict, so its absence or failure is a note, never a failed conversion."""
    try:
        from fp16guard.plan.cost import fp16_share, node_costs
    except ImportError:
        return None, "FP16 share not computed: fp16guard.plan.cost is not available"
    try:
        from fp16guard.io.shards import peek_shard

        shapes = {name: tuple(shape) for name, (_, shape) in peek_shard(sample).items() if name in {s.name for s in specs}}
        return fp16_share(node_costs(model, shapes), fp32), None
    except Exception as exc:  # an estimate must not sink a verified conversion
        return None, f"FP16 share not computed ({type(exc).__name__}: {exc})"


def _profile(backend, model_path: Path, artifact: Path, sample, specs, batches, report: Mapping) -> tuple[str | None, dict | None, str | None]:
    """Latency against FP32, only where it means FP16 speed.

    Returns:
        ``(speed line or None, profile record or None, note saying why there is no speed or None)``.
    """
    if not backend.real_fp16:
        return None, None, "no speed figure: on the CPU provider FP16 nodes run as FP32 behind casts, so CPU timings say nothing about FP16 speed"
    fallback = report.get("cpu_fallback_nodes") or []
    if report.get("emulated") or fallback:
        return None, None, f"no speed figure: {len(fallback) or 'some'} FP16 node(s) ran on the CPU provider, so the timings would not be FP16's"
    from fp16guard.backends.profile import default_batches
    from fp16guard.io.shards import batch_count, load_shard, prepare_feeds

    feeds = prepare_feeds(sample, load_shard(sample), specs)
    chosen = list(batches) if batches else default_batches(specs, batch_count(feeds))
    record = backend.profile(str(model_path), str(artifact), feeds, chosen)
    if not (record.get("measured") and record.get("fp16_kernels")):
        return None, record, record.get("note") or "no speed figure: nothing was timed with real FP16 kernels"
    return record.get("summary"), record, None


def _publish(artifact: Path, target: Path, overwrite: bool) -> Path:
    """Write ``artifact`` to ``target`` atomically: a temporary file beside it, then one rename
    (``overwrite``) or one hard link, which fails if ``target`` appeared meanwhile.

    A model with external data (2 GB or more) is saved again through
    :func:`fp16guard.io.model.save_model`, so its weights file is named after ``target``.

    Raises:
        ConfigError: ``target`` exists and ``overwrite`` is False.
    """
    from fp16guard.io.model import external_data_files

    target.parent.mkdir(parents=True, exist_ok=True)
    if external_data_files(artifact):
        from fp16guard.io.model import load_model, save_model

        if target.exists() and not overwrite:
            raise ConfigError(f"output {target} exists; expected a new path, or overwrite=True (CLI: --overwrite) to replace it")
        return save_model(load_model(artifact), target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(artifact, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # atomic, and never replaces a file that appeared meanwhile
            except FileExistsError:
                raise ConfigError(f"output {target} exists; expected a new path, or overwrite=True (CLI: --overwrite) to replace it") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
