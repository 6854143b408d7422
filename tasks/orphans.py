"""Flow runs whose process died are marked Crashed on the Prefect server (issue 20).

Why: a run killed with SIGKILL (or a lost machine, or a server lost mid-run) cannot tell the
server it ended, so its flow run stayed RUNNING for ever. Each calibrate flow run labels itself
with its process (:func:`record_flow_process`: labels ``fp16guard.process.pid``, ``.host``,
``.proc_start``); a later run that meets the evidence marks it Crashed:

- **a stale cache lock**: each lock record names the flow run that took it
  (:func:`lock_identity`); when a lock is broken because its holder is gone, that flow run is
  marked Crashed if *its own* process is gone too (:func:`on_stale_lock`; a dead Dask worker of a
  live flow does not crash the flow);
- **at the start of ``fp16guard run``**: the store's stale cache locks are broken
  (:func:`sweep_stale_locks`, with the same effect), then every fp16guard-calibrate flow run left
  RUNNING or PENDING whose labelled process ran on this host and is gone is marked
  (:func:`sweep_orphaned_runs`).

Only processes of this host (same host id, ``$FP16GUARD_HOST_ID`` or the host name) are judged:
another host's process can only be seen through its lock leases. A run without the labels (an
older version, or one killed before it labelled itself) is left alone. Its RUNNING and PENDING
task runs are marked Crashed with it. The library judges processes
(:func:`fp16guard.store.locks.holder_gone`); only this module talks to the server.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

__all__ = [
    "FLOW_NAME", "LABEL_PREFIX", "record_flow_process", "flow_process", "lock_identity", "on_stale_lock", "mark_crashed_if_orphaned",
    "sweep_stale_locks", "sweep_orphaned_runs",
]

#: The flow whose runs are swept (``flows.calibrate.calibrate``).
FLOW_NAME = "fp16guard-calibrate"
#: Prefix of the flow-run labels naming the run's process.
LABEL_PREFIX = "fp16guard.process."
#: Most flow runs one sweep looks at (newest first).
SWEEP_LIMIT = 200

_log = logging.getLogger("fp16guard.orphans")


def _current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.get_id()


def record_flow_process() -> None:
    """Label the current flow run with this process (pid, host id, process start time), so a
    later run can tell when it died. Outside a flow run it does nothing; a server error is
    logged, never raised (a run is not stopped for a label)."""
    from prefect.client.orchestration import get_client

    from fp16guard.store.locks import process_record

    run_id = _current_flow_run_id()
    if not run_id:
        return
    me = process_record()
    labels = {f"{LABEL_PREFIX}{k}": str(v) for k, v in me.items() if v is not None}
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(run_id, labels)
    except Exception as exc:  # noqa: BLE001 — see docstring
        _log.warning("fp16guard: could not label flow run %s with its process (%s); if it is killed, it stays RUNNING on the server", run_id, exc)


def flow_process(flow_run) -> dict | None:
    """``{"pid", "host", "proc_start"}`` from a flow run's labels, or None without them."""
    labels = dict(getattr(flow_run, "labels", None) or {})
    pid, host = labels.get(f"{LABEL_PREFIX}pid"), labels.get(f"{LABEL_PREFIX}host")
    if not host or not str(pid or "").isdigit():
        return None
    return {"pid": int(pid), "host": host, "proc_start": labels.get(f"{LABEL_PREFIX}proc_start")}


def lock_identity() -> dict:
    """Extra fields of a cache lock record: ``{"flow_run_id"}`` of the run taking it (empty
    outside a flow run)."""
    run_id = _current_flow_run_id()
    return {"flow_run_id": str(run_id)} if run_id else {}


def on_stale_lock(record: dict, reason: str) -> None:
    """Called when a stale cache lock was broken: mark the flow run that held it Crashed when its
    process is gone (see module docstring). Never raises."""
    run_id = record.get("flow_run_id")
    if not run_id or run_id == _current_flow_run_id():
        return
    try:
        if mark_crashed_if_orphaned(run_id, f"a later run broke its cache lock ({reason})"):
            _log.warning("fp16guard: flow run %s marked Crashed: its process is gone (%s)", run_id, reason)
    except Exception as exc:  # noqa: BLE001 — the lock is free either way; the sweep of the next CLI run tries again
        _log.debug("could not mark flow run %s crashed: %s", run_id, exc)


def _final(state) -> bool:
    return state is not None and state.is_final()


def mark_crashed_if_orphaned(flow_run_id, evidence: str = "", client=None) -> bool:
    """Set a flow run Crashed when it has not ended and its labelled process is gone (this host).

    Args:
        flow_run_id: the flow run (UUID or string).
        evidence: a few words for the state message (how it was found).
        client: a sync Prefect client (default: a new one).

    Returns:
        True when it was marked; False when it ended already, has no process labels, its
        process runs on another host, or is alive.
    """
    from prefect.client.orchestration import get_client

    if client is None:
        with get_client(sync_client=True) as own:
            return mark_crashed_if_orphaned(flow_run_id, evidence, own)
    from fp16guard.store.locks import holder_gone

    run = client.read_flow_run(flow_run_id)
    if _final(run.state):
        return False
    process = flow_process(run)
    if process is None or not holder_gone(process):
        return False
    _crash(client, run, process, evidence)
    return True


def _crash(client, run, process: dict, evidence: str) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    message = f"fp16guard: the process of this run (pid {process['pid']} on {process['host']}) is gone; marked Crashed at {when}"
    if evidence:
        message += f" — {evidence}"
    # force: the server's rules refuse a client's RUNNING -> CRASHED only for runs it thinks are
    # alive; this one cannot say otherwise any more.
    client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    open_tasks = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
        task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))),
    )
    for task_run in open_tasks:
        client.set_task_run_state(task_run.id, Crashed(message=message), force=True)


def sweep_stale_locks(store_url: str) -> list[tuple[str, str]]:
    """Break the stale cache locks of a store's local lock folders
    (:meth:`fp16guard.store.locks.LeaseLocks.sweep`), each telling :func:`on_stale_lock` (so the
    flow run that held it is marked Crashed when its process is gone).

    Returns:
        ``(lock file, reason)`` per lock removed.
    """
    from fp16guard.store.locks import LeaseLocks
    from tasks.caching import _report, lock_dir_for

    root = lock_dir_for(store_url)
    removed = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        locks = LeaseLocks(folder, report=_report)
        locks.on_stale = on_stale_lock
        removed += [(str(locks.path(key)), reason) for key, reason in locks.sweep()]
    return removed


def sweep_orphaned_runs(limit: int = SWEEP_LIMIT) -> list[tuple[str, str, dict]]:
    """Mark Crashed every :data:`FLOW_NAME` run left RUNNING or PENDING whose labelled process
    ran on this host and is gone (the newest ``limit`` such runs).

    Returns:
        ``(flow run id, flow run name, process)`` of each run marked.

    Raises:
        Whatever the Prefect client raises (the caller decides; ``fp16guard run`` ignores it).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    from fp16guard.store.locks import holder_gone

    marked = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))),
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )
        for run in runs:
            process = flow_process(run)
            if process is None or not holder_gone(process):
                continue
            _crash(client, run, process, "found by the next `fp16guard run` on this host")
            marked.append((str(run.id), run.name, process))
    return marked
