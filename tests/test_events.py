"""The registration event contract and ``fp16guard register`` (no server needed)."""

from __future__ import annotations

import json
import os

import pytest

from fp16guard import examples
from fp16guard.cli.main import main
from fp16guard.errors import ConfigError, DataError, ModelError
from fp16guard.events import (
    MODEL_REGISTERED,
    RELEASE_REGRESSED,
    regression_event,
    registration_event,
    run_parameters,
)


@pytest.fixture()
def model_and_data(tmp_path, monkeypatch):
    """A tiny overflow model and two shard folders, addressed by *relative* paths."""
    examples.save_model("mlp", tmp_path / "m.onnx")
    examples.write_shards("mlp", tmp_path / "calib", 2, 3, seed=0)
    examples.write_shards("mlp", tmp_path / "hold", 1, 3, seed=1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_registration_event_payload_is_absolute_and_valid(model_and_data):
    spec = registration_event("m.onnx", "mlp", "1.0", ["calib"], ["hold/*.npz"], threshold=5000)
    assert spec.event == MODEL_REGISTERED
    assert spec.resource["prefect.resource.id"] == "fp16guard.model.mlp/1.0"
    assert spec.resource["fp16guard.model.version"] == "1.0"
    p = spec.payload
    assert p["model"] == str(model_and_data / "m.onnx")
    assert p["calib"] == [str(model_and_data / "calib")]
    assert p["holdout"] == [str(model_and_data / "hold" / "*.npz")]
    assert p["threshold"] == 5000.0 and "store" not in p
    params = run_parameters(p, {"id": "x", "event": spec.event})
    assert params.plan.threshold == 5000.0
    assert params.trigger_event == {"id": "x", "event": spec.event}
    json.dumps(p)  # must travel as JSON


def test_registration_event_default_threshold_and_urls(model_and_data):
    spec = registration_event("s3://bucket/m.onnx", "mlp", "2", ["s3://bucket/calib/"], ["hold"], store="s3://bucket/store")
    assert spec.payload["model"] == "s3://bucket/m.onnx"  # URLs are passed on unchecked
    assert "threshold" not in spec.payload
    assert run_parameters(spec.payload).plan.threshold == 10000.0
    assert run_parameters(spec.payload).store == "s3://bucket/store"


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"name": "a/b"}, ConfigError, "name 'a/b'"),
        ({"version": ".."}, ConfigError, "version"),
        ({"threshold": 70000.0}, ConfigError, "threshold 70000.0"),
        ({"threshold": 0.0}, ConfigError, "threshold 0.0"),
        ({"model": "missing.onnx"}, ModelError, "missing.onnx"),
        ({"calib": ["nowhere"]}, DataError, "nowhere"),
        ({"holdout": []}, DataError, "holdout"),
    ],
)
def test_registration_event_rejects_bad_input(model_and_data, kwargs, error, text):
    args = {"model": "m.onnx", "name": "mlp", "version": "1", "calib": ["calib"], "holdout": ["hold"], **kwargs}
    with pytest.raises(error, match=text.replace(".", r"\.").replace("/", "/")):
        registration_event(**args)


def test_registration_event_no_check_allows_worker_only_paths(model_and_data):
    spec = registration_event("/data/m.onnx", "mlp", "1", ["/data/calib"], ["/data/hold"], check_local=False)
    assert spec.payload["model"] == "/data/m.onnx"


@pytest.mark.parametrize(
    "change, text",
    [
        ({"drop": "calib"}, "lacks \\['calib'\\]"),
        ({"add": {"colour": "red"}}, "unknown keys \\['colour'\\]"),
        ({"add": {"contract": 99}}, "contract 99"),
        ({"add": {"calib": []}}, "calib"),
    ],
)
def test_run_parameters_rejects_bad_payloads(model_and_data, change, text):
    payload = dict(registration_event("m.onnx", "mlp", "1", ["calib"], ["hold"]).payload)
    payload.pop(change.get("drop", ""), None)
    payload.update(change.get("add", {}))
    with pytest.raises(ConfigError, match=text):
        run_parameters(payload)


def test_regression_event():
    spec = regression_event("mlp", "1", "run-1", "output y: rel error 0.5 > 0.02", ["/h"], recalibration=None)
    assert spec.event == RELEASE_REGRESSED
    assert spec.resource["prefect.resource.id"] == "fp16guard.release.mlp/1"
    assert spec.payload["run_id"] == "run-1" and spec.payload["holdout"] == ["/h"]


def test_cli_register_dry_run_prints_event(model_and_data, capsys):
    code = main(["register", "m.onnx", "--name", "mlp", "--version", "3", "--calib", "calib", "--holdout", "hold", "--threshold", "2000", "--dry-run"])
    assert code == 0
    event = json.loads(capsys.readouterr().out)
    assert event["event"] == MODEL_REGISTERED
    assert event["payload"]["threshold"] == 2000.0
    assert os.path.isabs(event["payload"]["model"])


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--name", "bad name"], "name 'bad name'"),
        (["--threshold", "1e6"], "threshold"),
        (["--calib", "absent"], "absent"),
    ],
)
def test_cli_register_bad_input_exits_2(model_and_data, capsys, argv, text):
    base = {"--name": "mlp", "--version": "1", "--calib": "calib", "--holdout": "hold"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = ["register", "m.onnx"] + [x for kv in base.items() for x in kv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_register_without_server_exits_3(model_and_data, capsys, monkeypatch):
    # Port 1 on loopback refuses connections at once: the event cannot be sent. That is the
    # environment's failure (exit 3), not bad input (2).
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        code = main(["register", "m.onnx", "--name", "mlp", "--model-version", "1", "--calib", "calib", "--holdout", "hold"])
    assert code == 3
    assert "cannot send the event" in capsys.readouterr().err


def test_cli_register_without_a_url_uses_the_running_local_server(model_and_data, capsys, monkeypatch, tmp_path):
    # No PREFECT_API_URL and no local server in this Prefect home: one line naming both (exit 2).
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    argv = ["register", "m.onnx", "--name", "mlp", "--model-version", "1", "--calib", "calib", "--holdout", "hold"]
    with temporary_settings(restore_defaults={PREFECT_API_URL}, updates={PREFECT_HOME: str(tmp_path / "home")}):
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "no local fp16guard server is running" in err and len(err.strip().splitlines()) == 1
    # A local server recorded as running is used: its (unreachable here) URL is where the event goes.
    from fp16guard.cli import server

    monkeypatch.setattr(server.LocalServer, "running", lambda self, patience_s=0.0: {"api_url": "http://127.0.0.1:1/api", "pid": 0})
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code = main(argv)
    assert code == 3 and "http://127.0.0.1:1/api" in capsys.readouterr().err
