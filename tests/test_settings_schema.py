"""The run form the Prefect UI renders from :class:`RunParameters`, and what the server accepts.

Uses Prefect's own schema generation (``parameter_schema`` of the flow function) and the JSON
Schema validation its server runs on deployment flow runs (``schema_tools.validate``).
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from flows.calibrate import calibrate
from fp16guard.errors import ConfigError
from fp16guard.settings import SAFE_SEGMENT, RunParameters, parse_parameters


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
    assert form["properties"]["backend"]["enum"] == ["onnxruntime", "tensorrt"]  # a choice in the form
    titles = json.dumps(schema)
    assert "Tensorrt" not in titles and "Fp32" not in titles
    assert form["properties"]["plan"]["title"].startswith("Plan")
    # Bounds are in the schema, not only in prose.
    plan = (schema.get("definitions") or schema.get("$defs"))["PlanSettings"]
    assert plan["properties"]["threshold"]["maximum"] == 65504


BASE = {"model": "/m/model.onnx", "calib": ["/d/calib"], "holdout": ["/d/holdout"], "name": "resnet", "version": "7"}


#: Each case: parameters, and None (accepted) or what the flow's own validation must say: the
#: field, pydantic's error type and a fragment of the message.
_CASES = [
    (BASE, None),
    ({**BASE, "trigger_event": {"id": "e1", "event": "fp16guard.model.registered"}}, None),  # triggered runs
    ({**BASE, "backend": "tensorrt"}, None),
    ({**BASE, "name": "../x"}, (("name",), "value_error", "name '../x' is not allowed; expected 1-128 letters")),
    ({**BASE, "version": "a/b"}, (("version",), "value_error", "version 'a/b' is not allowed; expected 1-128 letters")),
    ({**BASE, "plan": {"threshold": 70000}}, (("plan", "threshold"), "less_than_equal", "less than or equal to 65504")),
    ({**BASE, "typo_field": 1}, (("typo_field",), "extra_forbidden", "Extra inputs are not permitted")),
    ({**BASE, "backend": "nope"}, (("backend",), "value_error", "expected one of onnxruntime, tensorrt")),
]


@pytest.mark.parametrize("params, rejected", _CASES, ids=[f"case{i}" for i in range(len(_CASES))])
def test_server_side_validation(schema, params, rejected):
    errors = validate({"params": params}, schema, preprocess=True)
    assert (not errors) is (rejected is None), [e.message for e in errors]
    # The flow's own validation agrees, for the stated reason (a triggered run's trigger_event is
    # accepted there too). Only pydantic's ValidationError counts as a refusal: any other
    # exception is a bug and fails the test.
    if rejected is None:
        RunParameters.model_validate(params)
        return
    loc, kind, fragment = rejected
    with pytest.raises(ValidationError) as info:
        RunParameters.model_validate(params)
    first = info.value.errors()[0]
    assert (first["loc"], first["type"]) == (loc, kind), first
    assert fragment in first["msg"], first["msg"]


def test_bad_backend_is_one_line_at_parse_time():
    with pytest.raises(ConfigError) as info:
        parse_parameters(RunParameters, {**BASE, "backend": "nope"})
    assert str(info.value) == "backend 'nope' is not accepted: expected one of onnxruntime, tensorrt"


def test_backend_registered_after_import_is_accepted_and_offered():
    """The settings check a backend name when they parse (fp16guard.backend_names), not when they
    are imported: a backend registered later is accepted, and the form offers it."""
    from fp16guard.backends.registry import register
    from fp16guard.backends.onnxruntime import make_backend

    with pytest.raises(ValidationError):
        RunParameters.model_validate({**BASE, "backend": "later-test"})
    register("later-test", make_backend, "test backend")
    try:
        assert RunParameters.model_validate({**BASE, "backend": "later-test"}).backend == "later-test"
        assert "later-test" in RunParameters.model_json_schema()["properties"]["backend"]["enum"]
    finally:
        from fp16guard.backends import registry

        registry._REGISTERED.pop("later-test")
    assert RunParameters.model_json_schema()["properties"]["backend"]["enum"] == ["onnxruntime", "tensorrt"]
