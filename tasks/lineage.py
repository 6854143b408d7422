"""Tasks that record where a run came from (flow run, deployment, trigger)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.runtime import deployment, flow_run


@task(name="run-context")
def run_context_task(trigger_event: dict[str, Any] | None = None) -> dict[str, Any]:
    """Describe the current flow run and what triggered it.

    The trigger is ``event`` when the run carries a triggering event (passed in by the
    deployment's trigger, see deployments/prefect.yaml), ``schedule`` when the server scheduled
    it, ``deployment`` for a deployment run started by hand (UI or ``prefect deployment run``),
    and ``manual`` for a direct call (CLI, Python).

    Returns:
        ``{"flow_run": {...}, "trigger": {...}}``.
    """
    run_id = flow_run.get_id()
    info = {
        "id": run_id,
        "name": flow_run.get_name(),
        "deployment_id": deployment.get_id(),
        "deployment_name": deployment.get_name(),
        "ui_url": _ui_url(),
    }
    trigger: dict[str, Any] = {"type": "manual"}
    if trigger_event:
        trigger = {"type": "event", **trigger_event}
    elif info["deployment_id"]:
        trigger = {"type": "deployment"}
        auto, created_by = _run_origin(run_id)
        if auto:
            trigger = {"type": "schedule"}
        elif created_by:
            trigger["created_by"] = created_by
    return {"flow_run": info, "trigger": trigger}


def _run_origin(run_id: str | None) -> tuple[bool, dict | None]:
    """(auto_scheduled, created_by) of a flow run, read from the API; (False, None) if unknown."""
    if not run_id:
        return False, None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    created_by = run.created_by.model_dump(mode="json") if run.created_by else None
    return bool(run.auto_scheduled), created_by


def _ui_url() -> str | None:
    """The flow run's page in the Prefect UI; None when no UI URL is configured (the embedded
    server), where Prefect would otherwise return a URL starting with 'None'."""
    url = flow_run.get_flow_run_ui_url() if hasattr(flow_run, "get_flow_run_ui_url") else None
    return url if url and not url.startswith("None") else None
