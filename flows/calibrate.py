"""The fp16guard flow: statistics per shard → plan → build → verify → publish.

This module is the DAG only: which task feeds which, mapping over shards, and the release gate.
Every computation is a task in ``tasks/`` over a pure function of the ``fp16guard`` library.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from fp16guard.errors import VerificationFailed
from fp16guard.settings import RunParameters
from tasks.build import build_backend_task, build_mixed_onnx_task
from tasks.caching import code_digest, lock_dir_for, task_code_digest
from tasks.inputs import calib_records, discover, fingerprint_model
from tasks.lineage import run_context_task
from tasks.orphans import record_flow_process
from tasks.plan import plan_task
from tasks.preflight import check_independent_task
from tasks.publish import discard_run, publish_run_task, stage_run_task, write_verification_task
from tasks.runners import FanOut
from tasks.stats import STATS_MODULES, reduce_stats_task, shard_group_stats_task, shard_groups_task
from tasks.ui import emit_release_asset, publish_ui_task
from flows.fanout import profile_pass, verification_pass


def verify_code(backend: str) -> str:
    """The code part of the verification task's cache key: every library module the task and
    the run's ``backend`` can import (found from the registry and the import closure, never a
    hand-kept list, which missed the TensorRT backend's modules: issue 20)."""
    return task_code_digest("tasks.verify", backend)


def statistics_pass(params: RunParameters, store_url: str, model_sha256: str, calib: list[dict], providers: list[str], fan: FanOut | None = None) -> list[dict]:
    """Statistics of every calibration shard, one result per shard in input order.

    Shards go in groups (``params.execution``: samples / bytes per group, at least one group per
    worker) to :func:`tasks.stats.shard_group_stats_task` on the runner chosen at run time
    (``fan``, :class:`tasks.runners.FanOut`: threads, Dask or dask-cuda; None: one opened and
    closed here); each shard is cached on its own
    content, so neither the runner nor the grouping changes a result. The CLI's progress bar
    counts shards (from the worker threads as they finish; from Dask workers as groups return);
    the UI shows a progress artifact updated as groups return.
    """
    from fp16guard.progress import Progress

    execution = params.execution
    own = fan is None
    fan = fan or FanOut(execution)
    code = code_digest(*STATS_MODULES)
    shards = [c["shard"] for c in calib]
    artifact = _progress_artifact(len(shards))
    try:
        runner, choice = fan.runner, fan.choice
        groups = shard_groups_task(params.model, shards, execution.group_samples, execution.group_bytes, max(1, fan.workers))
        get_run_logger().info("statistics: %d shards in %d groups; %s", len(shards), len(groups), fan.describe())
        with Progress(len(shards), "calibration shards") as progress, progress.channel() as channel:
            futures = [
                runner.submit(
                    shard_group_stats_task,
                    parameters={
                        "store_url": store_url,
                        "model_path": params.model,
                        "model_sha256": model_sha256,
                        "shards": [shards[i] for i in group],
                        "shard_sha256": [calib[i]["sha256"] for i in group],
                        "code": code,
                        "batch_size": params.batch_size,
                        "providers": providers,
                        "label": f"shards {group[0] + 1}-{group[-1] + 1} of {len(shards)}",
                        "progress": channel,
                        "threads": choice.threads,
                    },
                )
                for group in groups
            ]
            shard_results: list[dict] = []
            for future in futures:
                part = future.result()
                progress.advance_many(sum(1 for r in part if not r.get("reported")), part[-1]["shard"] if part else "")
                shard_results.extend({k: v for k, v in r.items() if k not in ("reported", "cached")} for r in part)
                _update_artifact(artifact, progress.done, len(shards))
    finally:
        if own:
            fan.close()
    return shard_results


def _progress_artifact(total: int):
    try:
        from prefect.artifacts import create_progress_artifact

        return create_progress_artifact(progress=0.0, description=f"calibration shards measured (of {total})")
    except Exception:  # noqa: BLE001 — the UI display never stops a run
        return None


def _update_artifact(artifact_id, done: int, total: int) -> None:
    if artifact_id is None:
        return
    try:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(artifact_id=artifact_id, progress=100.0 * done / max(1, total))
    except Exception:  # noqa: BLE001
        pass


# One worker: shards run one after another so a worker holds one ORT session (or one GPU
# context) at a time; onnxruntime already uses every core inside a session.
@flow(name="fp16guard-calibrate", task_runner=ThreadPoolTaskRunner(max_workers=1), validate_parameters=True)
def calibrate(params: RunParameters) -> dict:
    """Calibrate, plan, build and verify one model version; publish the run to the store.

    Args:
        params: every setting of the run (the Prefect UI renders this as a form).

    Returns:
        ``{"run_id", "run_dir", "passed", "status", "released", "reason"}``.

    Raises:
        UserError: bad input; the run leaves nothing in the store.
        VerificationFailed: the artifact does not match FP32; the run is kept, marked rejected.
    """
    from fp16guard.backends.device import device_name
    from fp16guard.backends.registry import get_backend
    from fp16guard.store.runs import open_store

    record_flow_process()  # labels this run with its process: a later run marks it Crashed if that dies
    store = open_store(params.store)
    # Resolved once, on this worker: "auto" becomes CUDA or CPU here, and the concrete providers
    # key the caches and are recorded (CPU emulation and real FP16 kernels are different checks).
    backend = get_backend(params.backend, params.providers)
    providers = backend.providers
    context = run_context_task(params.trigger_event)
    model = fingerprint_model(params.model)
    calib = discover(params.calib, "calibration")
    holdout = discover(params.holdout, "holdout")
    check_independent_task(calib, holdout, params.allow_overlap)  # runs no CLI preflighted (deployments, events)
    staged = stage_run_task(store.url, params.name, params.version)
    # The runner of the fanned-out passes (statistics, holdout verification, profile), opened on
    # first use and kept for all three: a Dask or dask-cuda cluster starts once per run.
    fan = FanOut(params.execution)
    try:
        shard_results = statistics_pass(params, store.url, model["sha256"], calib, providers, fan)
        files = reduce_stats_task(shard_results, staged["dir"])
        # Repair checks the plan on calibration data with the run's gate; holdout stays independent.
        plan = plan_task(params.model, files["stats"], params.plan, staged["dir"], [c["shard"] for c in calib], params.verify, params.batch_size)
        artifact = build_mixed_onnx_task(params.model, plan, staged["dir"])
        holdout_refs = [h["shard"] for h in holdout]
        options = {
            "tensorrt_mode": params.tensorrt_mode, "tensorrt_workspace_mib": params.tensorrt_workspace_mib,
            "timing_cache_dir": str(lock_dir_for(store.url).parent / "tensorrt-timing"),
        }
        try:
            built = build_backend_task(
                backend.name, providers, params.model, artifact["path"], plan, staged["dir"],
                [c["shard"] for c in calib] + holdout_refs, options, params.batch_size,
            )
        except VerificationFailed as exc:
            # The engine ignored the plan's FP32 constraints: keep the run, rejected, with the
            # offending layers (the rejected inspector JSON is in the run folder).
            built = {"name": backend.name, "implementation": backend.implementation, "artifact": None}
            verification = {"passed": False, "reason": exc.reason, "outputs": {}, "engine_check": getattr(exc, "violations", [])}
            profile = None
        else:
            if getattr(backend, "requested", None):  # e.g. CUDA asked for, not usable here: CPU ran
                built = {**built, "requested_providers": backend.requested}
            artifact_path = f"{staged['dir']}/{built['artifact']}"
            verification = verification_pass(
                fan, store.url, params, model["sha256"], artifact_path, built["artifact_sha256"], holdout,
                verify_code(backend.name), providers, backend.name,
            )
            profile = None
            fallback = verification.get("cpu_fallback_nodes") or []
            if backend.real_fp16 and (fallback or verification.get("emulated")):
                # FP16 nodes ran on the CPU provider: timings of this session are not FP16's.
                profile = {"measured": False, "fp16_kernels": False, "providers": providers, "cpu_fallback_nodes": fallback,
                           "note": f"not measured: {len(fallback) or 'some'} FP16 node(s) ran on the CPU provider, so the timings would not be FP16's"}
            elif params.profile_batches != []:
                profile = profile_pass(
                    fan, store.url, params, backend.name, providers, device_name(providers), model["sha256"], artifact_path,
                    built["artifact_sha256"], calib[0], task_code_digest("tasks.profile", backend.name),
                )
        fan.close()  # a local cluster stops before the run is published
        write_verification_task(verification, staged["dir"])
        result = publish_run_task(
            store.url, staged, params, context, model, shard_results, calib, holdout, plan, verification, built, profile,
        )
    except BaseException:
        fan.close()
        discard_run(staged)
        raise
    publish_ui_task(store.url, params.name, params.version, result, plan, verification)
    if result["released"]:
        emit_release_asset(f"{result['run_dir']}/{backend.artifact}", model["location"], [c["location"] for c in calib_records(calib)], result["run_dir"])
    if not verification["passed"]:
        # The run is stored (rejected); "_run" lets a caller report where it is.
        raise VerificationFailed(verification["reason"], {**verification, "_run": result})
    return result
