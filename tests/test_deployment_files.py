"""``deployments/``: the trigger's templates and the pool's job variables, rendered by Prefect itself.

No server: the same hydration code the server's RunDeployment action uses renders the trigger
parameters from a registration event, and the process worker's job configuration renders the
pool template.
"""

from __future__ import annotations

import copy
import datetime
import json
import uuid
from pathlib import Path

import pytest
import yaml

from fp16guard.events import registration_event, run_parameters
from fp16guard.settings import RunParameters

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
POOL_TEMPLATE = ROOT / "deployments" / "gpu-pool.json"


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}


def _render_trigger(payload: dict, event_id: uuid.UUID, deployment: str = "on-registration") -> dict:
    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    trigger = _deployments()[deployment]["triggers"][0]
    params = copy.deepcopy(trigger["parameters"])
    RunDeployment._upgrade_v1_templates(params)  # as the server does with plain "{{ }}" strings
    event = ReceivedEvent(
        id=event_id,
        occurred=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        event=trigger["expect"][0],
        resource={"prefect.resource.id": f"fp16guard.model.{payload['name']}/{payload['version']}"},
        payload=payload,
    )
    return hydrate(params, HydrationContext(raise_on_error=True, render_jinja=True, jinja_context={"event": event}))


@pytest.mark.parametrize("extra", [{}, {"threshold": 5000.0}, {"store": "s3://bucket/store", "threshold": 123.5}])
def test_trigger_parameters_match_the_event_contract(tmp_path, extra):
    payload = registration_event("/m.onnx", "mlp", "1", ["/c1", "/c2"], ["/h"], check_local=False, **extra).payload
    event_id = uuid.uuid4()
    rendered = _render_trigger(payload, event_id)
    # JSON round trip: what the server stores as the run's parameters.
    from_trigger = RunParameters(**json.loads(json.dumps(rendered))["params"])
    expected = run_parameters(payload, from_trigger.trigger_event)
    assert from_trigger == expected
    assert from_trigger.calib == ["/c1", "/c2"]
    assert from_trigger.trigger_event == {
        "id": str(event_id),
        "event": "fp16guard.model.registered",
        "resource": "fp16guard.model.mlp/1",
        "occurred": "2026-01-02T03:04:05+00:00",
    }


def test_deployments_target_the_gpu_pools_and_flows_exist():
    deps = _deployments()
    assert set(deps) >= {"on-registration", "on-registration-multi-gpu", "manual", "nightly"}
    for name, d in deps.items():
        assert d["work_pool"]["name"] == ("fp16guard-multigpu" if name.endswith("multi-gpu") else "fp16guard-gpu")
        path, func = d["entrypoint"].split(":")
        assert f"def {func}(" in (ROOT / path).read_text()
    assert deps["nightly"]["schedules"][0]["cron"]
    assert deps["on-registration"]["triggers"][0]["expect"] == ["fp16guard.model.registered"]


@pytest.mark.parametrize("extra", [{}, {"threshold": 5000.0, "store": "s3://bucket/store"}])
def test_multi_gpu_trigger_is_the_registration_run_with_dask_cuda(extra):
    """The multi-GPU entry renders, from the same event, exactly the on-registration run's
    parameters with ``execution.task_runner`` dask-cuda (RunParameters validates both)."""
    payload = registration_event("/m.onnx", "mlp", "1", ["/c1"], ["/h1", "/h2"], check_local=False, **extra).payload
    event_id = uuid.uuid4()
    multi = RunParameters(**json.loads(json.dumps(_render_trigger(payload, event_id, "on-registration-multi-gpu")))["params"])
    single = RunParameters(**json.loads(json.dumps(_render_trigger(payload, event_id)))["params"])
    assert multi.execution.task_runner == "dask-cuda" and single.execution.task_runner == "threads"
    assert multi.model_copy(update={"execution": single.execution}) == single == run_parameters(payload, single.trigger_event)


def test_one_registration_trigger_is_enabled():
    """Both registration deployments listen to the same event: as shipped, only one starts a run."""
    triggers = [t for d in _deployments().values() for t in d.get("triggers", []) if "fp16guard.model.registered" in t["expect"]]
    assert len(triggers) == 2
    assert [t["name"] for t in triggers if t["enabled"]] == ["fp16guard-model-registered"]


def test_pool_template_is_documented_for_both_pools():
    """docs/DEPLOYMENT.md creates both pools from the one template and names its job variables."""
    doc = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    for pool in ("fp16guard-gpu", "fp16guard-multigpu"):
        assert f"prefect work-pool create {pool} --type process --base-job-template deployments/gpu-pool.json" in doc
    for variable in json.loads(POOL_TEMPLATE.read_text())["variables"]["properties"]:
        if variable in ("device", "store"):
            assert f"| `{variable}` |" in doc


@pytest.mark.parametrize(
    "values, device, store",
    [
        ({}, "7", "/worker/store"),  # empty job variables: the worker's own environment wins
        ({"device": "1"}, "1", "/worker/store"),
        ({"device": "0,1", "store": "s3://b/p"}, "0,1", "s3://b/p"),
        ({"device": "0,1,2,3"}, "0,1,2,3", "/worker/store"),  # a multi-GPU worker's run: four dask-cuda workers
    ],
)
def test_pool_job_variables_set_device_and_store(monkeypatch, values, device, store):
    from prefect.client.schemas.objects import FlowRun
    from prefect.workers.process import ProcessJobConfiguration

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setenv("FP16GUARD_STORE", "/worker/store")
    template = json.loads(POOL_TEMPLATE.read_text())
    config = ProcessJobConfiguration.from_template_and_values(template, values)
    if hasattr(config, "__await__"):
        import asyncio

        config = asyncio.run(config)
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4()))
    assert config.env["CUDA_VISIBLE_DEVICES"] == device
    assert config.env["FP16GUARD_STORE"] == store
