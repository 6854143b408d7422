"""fp16guard.convert (the Python API), ``fp16guard convert`` (its CLI face) and the refusals of
bad input that ``run`` and ``convert`` share (issue 19, items 2 and 4).

Real onnxruntime on the built-in demo example (a few seconds per conversion on the CPU); no
Prefect server except for the calibrate_task test, which uses the session's real one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from fp16guard.errors import ConfigError, DataError, ModelError
from tests.conftest import REPO, run_cli


def _copy_data(src: str, dest: Path, transform=None) -> Path:
    """Copy a shard folder, applying ``transform(arrays) -> arrays`` to every shard."""
    dest.mkdir(parents=True)
    for shard in sorted(Path(src).glob("*.npz")):
        arrays = dict(np.load(shard))
        np.savez(dest / shard.name, **(transform(arrays) if transform else arrays))
    return dest


# ----------------------------------------------------------------------------- the Python API


def test_python_one_liner_without_server_or_prefect(demo_files, tmp_path):
    # The "done when" line, in a fresh interpreter: no server, and Prefect never imported.
    out = tmp_path / "m16.onnx"
    code = (
        "import sys, fp16guard\n"
        "light = not any(m.split('.')[0] in ('onnx', 'onnxruntime', 'pyarrow') for m in sys.modules)\n"
        f"r = fp16guard.convert({demo_files['model']!r}, {demo_files['calib']!r}, {demo_files['holdout']!r}, output={str(out)!r})\n"
        "print(r)\n"
        "print('LIGHT', light, 'PREFECT', sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')[:3])\n"
    )
    env = {"PYTHONPATH": str(REPO), "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens there
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**__import__("os").environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("VERIFIED: "), proc.stdout
    assert "LIGHT True PREFECT []" in proc.stdout
    assert "fp32 nodes:" in proc.stdout and "worst relative error:" in proc.stdout and "holdout:              given" in proc.stdout
    onnx.checker.check_model(str(out))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(out)).graph.initializer)


def test_result_is_typed_and_output_is_refused_unless_overwrite(demo_files, tmp_path):
    import fp16guard
    from fp16guard.plan.records import Plan
    from fp16guard.records import VerificationReport, dumps

    out = tmp_path / "m16.onnx"
    r = fp16guard.convert(demo_files["model"], demo_files["calib"], demo_files["holdout"], output=out)
    assert isinstance(r, fp16guard.Result) and r.verified and r.status == "verified"
    assert isinstance(r.plan, Plan) and isinstance(r.verification, VerificationReport)
    assert r.output == out and r.artifact == out and out.is_file()
    assert r.workdir is None  # the temporary work folder goes once the artifact is placed
    assert r.fp32_nodes == [e.name for e in r.plan.fp32_nodes] and r.fp32_nodes
    assert r.fp16_share is None or 0 < r.fp16_share.share_flops <= 1
    assert r.speed is None  # CPU: no FP16 speed claim
    assert any("no speed figure" in n for n in r.notes)
    with pytest.raises(AttributeError):
        r.verified = False  # frozen
    data = json.loads(dumps(r.to_dict()))
    assert data["passed"] is True and data["output"] == str(out) and data["holdout"] == "given"

    before = out.stat().st_mtime_ns
    with pytest.raises(ConfigError, match="exists; expected a new path, or overwrite=True"):
        fp16guard.convert(demo_files["model"], demo_files["calib"], demo_files["holdout"], output=out)
    assert out.stat().st_mtime_ns == before
    again = fp16guard.convert(demo_files["model"], demo_files["calib"], demo_files["holdout"], output=out, overwrite=True)
    assert again.verified and out.stat().st_mtime_ns >= before
    assert not list(tmp_path.glob(".m16.onnx.*"))  # no temporary file left beside it


def test_holdout_split_from_calibration_shards_and_samples(demo_files, tmp_path):
    import fp16guard

    r = fp16guard.convert(demo_files["model"], demo_files["calib"], workdir=tmp_path / "w")
    assert r.holdout.startswith("holdout split from calibration") and "1 of 4 shards" in r.holdout
    assert r.verification.shards == [str(Path(demo_files["calib"]) / "shard-0003.npz")]
    assert r.workdir == tmp_path / "w" and (r.workdir / "plan.json").is_file() and (r.workdir / "verification.json").is_file()
    assert r.output is None and r.artifact.parent == r.workdir  # no output: the artifact stays in the work folder
    assert "holdout split from calibration" in str(r)

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(Path(demo_files["calib"]).glob("*.npz"))[0], one / "s.npz")  # 32 samples
    r = fp16guard.convert(demo_files["model"], str(one), keep_workdir=False)
    assert r.holdout == f"holdout split from calibration (last 6 of 32 samples of {one / 's.npz'})"
    assert r.verification.samples == 6 and r.workdir is None


def test_one_sample_and_no_holdout_is_refused(demo_files, tmp_path):
    import fp16guard

    tiny = _copy_data(demo_files["calib"], tmp_path / "tiny", lambda a: {k: v[:1] for k, v in a.items()})
    for extra in sorted(tiny.glob("*.npz"))[1:]:
        extra.unlink()
    with pytest.raises(DataError, match="holds 1 sample and no holdout was given"):
        fp16guard.convert(demo_files["model"], str(tiny))


def test_overlap_allowed_says_not_independent(demo_files):
    import fp16guard

    r = fp16guard.convert(demo_files["model"], demo_files["calib"], demo_files["calib"], allow_overlap=True)
    assert r.independent is False
    assert "not independent" in r.verdict() and "not independent" in str(r)
    assert r.verification.extra.get("independent") is False


# ----------------------------------------------------------------------------- refusals (item 4)


@pytest.fixture
def bad_inputs(demo_files, tmp_path) -> dict:
    """One bad variant of the demo's inputs per refusal."""
    copy = tmp_path / "same-content"
    shutil.copytree(demo_files["calib"], copy)
    return {
        "int32": str(_copy_data(demo_files["holdout"], tmp_path / "int32", lambda a: {k: (v * 100).astype(np.int32) for k, v in a.items()})),
        "float64": str(_copy_data(demo_files["holdout"], tmp_path / "float64", lambda a: {k: v.astype(np.float64) for k, v in a.items()})),
        "same_content": str(copy),
        "folder": str(Path(demo_files["model"]).parent),
    }


def test_preflight_refusals_shared_by_run(demo_files, bad_inputs):
    # `fp16guard run` calls preflight(params) before any server or flow: each refusal is a UserError.
    from fp16guard.preflight import preflight
    from fp16guard.settings import RunParameters

    base = {"model": demo_files["model"], "calib": [demo_files["calib"]], "holdout": [demo_files["holdout"]], "name": "m", "version": "1"}
    preflight(RunParameters(**base))  # the good inputs pass
    preflight(RunParameters(**{**base, "holdout": [bad_inputs["float64"]]}))  # float64 is cast, as documented
    with pytest.raises(DataError, match=r"has dtype int32; the model expects .*integer data for a float input is refused"):
        preflight(RunParameters(**{**base, "holdout": [bad_inputs["int32"]]}))
    with pytest.raises(DataError, match=r"holdout overlaps the calibration data: .*\(same file\).*--allow-overlap"):
        preflight(RunParameters(**{**base, "holdout": [demo_files["calib"]]}))
    with pytest.raises(DataError, match=r"\(same content\)"):
        preflight(RunParameters(**{**base, "holdout": [bad_inputs["same_content"]]}))
    preflight(RunParameters(**{**base, "holdout": [demo_files["calib"]]}), allow_overlap=True)
    with pytest.raises(ConfigError, match=r"--force-fp32-ops names op type 'NotAnOp' that the model does not have; expected op types of the model: Add, .*Softmax"):
        preflight(RunParameters(**{**base, "plan": {"force_fp32_ops": ["Softmax", "NotAnOp"]}}))
    with pytest.raises(ConfigError, match=r"'softmax': did you mean 'Softmax'"):
        preflight(RunParameters(**{**base, "plan": {"force_fp32_ops": ["softmax"]}}))
    with pytest.raises(ModelError, match=r"is a folder, not a file; expected an \.onnx file; it holds demo\.onnx"):
        preflight(RunParameters(**{**base, "model": bad_inputs["folder"]}))


def test_run_cli_refuses_before_any_server(demo_files, bad_inputs, tmp_path):
    # PREFECT_API_URL points nowhere: a refusal must come first, as status 2 with one line.
    common = ["--name", "m", "--model-version", "1", "--store", str(tmp_path / "store")]
    cases = {
        "int32": ["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", bad_inputs["int32"], *common],
        "overlap": ["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["calib"], *common],
        "ops": ["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], "--force-fp32-ops", "NotAnOp", *common],
        "folder": ["run", bad_inputs["folder"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], *common],
    }
    for name, args in cases.items():
        proc = run_cli(args, api_url="http://127.0.0.1:9/api", timeout=120)
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
    assert not (tmp_path / "store").exists()


def test_convert_cli_writes_and_refuses_in_one_line(demo_files, bad_inputs, tmp_path):
    out = tmp_path / "out" / "m16.onnx"
    proc = run_cli(["convert", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], "-o", str(out), "--json"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("VERIFIED: ") and out.is_file()
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["passed"] is True and summary["output"] == str(out) and summary["fp32_nodes"] >= 1

    base = ["convert", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"]]
    fresh = tmp_path / "never.onnx"
    cases = {
        "exists": (base + ["-o", str(out)], "exists; expected a new path"),
        "int32": (["convert", demo_files["model"], "--calib", demo_files["calib"], "--holdout", bad_inputs["int32"], "-o", str(fresh)], "integer data for a float input is refused"),
        "overlap": (["convert", demo_files["model"], "--calib", demo_files["calib"], "--holdout", bad_inputs["same_content"], "-o", str(fresh)], "same content"),
        "ops": (base + ["--force-fp32-ops", "NotAnOp", "-o", str(fresh)], "op types of the model"),
        "folder": (["convert", bad_inputs["folder"], "--calib", demo_files["calib"], "-o", str(fresh)], "is a folder, not a file"),
        "strategy": (base + ["--strategy", "nope", "-o", str(fresh)], "invalid choice"),
        "no output": (base, "-o/--output"),
    }
    for name, (args, expected) in cases.items():
        proc = run_cli(args, timeout=120)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert expected in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert not fresh.exists(), name


# ----------------------------------------------------------------------------- Prefect task


@pytest.mark.slow
def test_calibrate_task_in_a_users_flow(prefect_api_url, demo_files, tmp_path):
    from prefect import flow

    import fp16guard
    from fp16guard.prefect import calibrate_task

    out = tmp_path / "m16.onnx"

    @flow
    def users_flow():
        return calibrate_task(demo_files["model"], [demo_files["calib"]], [demo_files["holdout"]], output=str(out))

    result = users_flow()
    assert isinstance(result, fp16guard.Result) and result.verified and out.is_file()


def test_convert_help_lists_exit_statuses(capsys):
    from fp16guard.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "no Prefect server" in out and "-o OUT" in out
    assert "2  bad input" in out and "3  environment failure" in out


def test_demo_files_go_under_the_prefect_home(tmp_path, monkeypatch):
    # The demo no longer leaves an untracked fp16guard-demo/ in the folder it runs from (a clone).
    from fp16guard.cli.commands.demo import default_workdir

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "ph"))
    from prefect.settings import PREFECT_HOME, temporary_settings

    with temporary_settings({PREFECT_HOME: str(tmp_path / "ph")}):
        assert default_workdir() == tmp_path / "ph" / "fp16guard-demo"
