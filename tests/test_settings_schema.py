"""The run form the Prefect UI renders from :class:`RunParameters`, and what the server accepts.

Uses Prefect's own schema generation (``parameter_schema`` of the flow function) and the JSON
Schema validation its server runs on deployment flow runs (``schema_tools.validate``).
"""

from __future__ import annotations

import json

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from flows.calibrate import calibrate
from fp16guard.settings import SAFE_SEGMENT, RunParameters


@pytest.fixture(scope="module")
def schema() -> dict:
    return parameter_schema(calibrate.fn).model_dump_for_openapi()


def _run_definition(schema: dict) -> dict:
    definitions = schema.get("definitions") or schema.get("$defs") or {}
    return definitions["RunParameters"]


def test_form_hides_trigger_event_and_has_titles_and_patterns(schema):
    form = _run_definition(schema)
    assert "trigger_event" not in form["properties"]
    assert form["properties"]["name"]["pattern"] == SAFE_SEGMENT.pattern
    assert form["properties"]["version"]["pattern"] == SAFE_SEGMENT.pattern
    assert form["properties"]["tensorrt_mode"]["title"] == "TensorRT typing mode"
    titles = json.dumps(schema)
    assert "Tensorrt" not in titles and "Fp32" not in titles
    assert form["properties"]["plan"]["title"].startswith("Plan")
    # Bounds are in the schema, not only in prose.
    plan = (schema.get("definitions") or schema.get("$defs"))["PlanSettings"]
    assert plan["properties"]["threshold"]["maximum"] == 65504


BASE = {"model": "/m/model.onnx", "calib": ["/d/calib"], "holdout": ["/d/holdout"], "name": "resnet", "version": "7"}


@pytest.mark.parametrize(
    "params, ok",
    [
        (BASE, True),
        ({**BASE, "trigger_event": {"id": "e1", "event": "fp16guard.model.registered"}}, True),  # triggered runs
        ({**BASE, "name": "../x"}, False),
        ({**BASE, "version": "a/b"}, False),
        ({**BASE, "plan": {"threshold": 70000}}, False),
        ({**BASE, "typo_field": 1}, False),
    ],
)
def test_server_side_validation(schema, params, ok):
    errors = validate({"params": params}, schema, preprocess=True)
    assert (not errors) is ok, [e.message for e in errors]
    # The flow's own validation agrees (a triggered run's trigger_event is accepted there too).
    try:
        RunParameters.model_validate(params)
        accepted = True
    except Exception:
        accepted = False
    assert accepted is ok
