"""``fp16guard run`` as a user runs it: exit statuses, the JSON line, one-line errors, no artifacts.

In-process (``fp16guard.cli.main.main``): a subprocess would add only a Prefect import per test.
Bad input must be found before any server is contacted; a guard makes reaching the server fail
the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fp16guard.cli.main import build_parser, main


def _run_args(files: dict, store: Path, *extra: str) -> list[str]:
    return ["run", files["model"], "--calib", files["calib"], "--holdout", files["holdout"], "--name", "demo", "--model-version", "1", "--store", str(store), *extra]


@pytest.fixture
def no_server(monkeypatch):
    """Fail the test if the command gets as far as looking for a Prefect server."""
    def _reached(*_a, **_k):
        raise AssertionError("the command reached the Prefect server: the bad input was not found before the flow")

    monkeypatch.setattr("fp16guard.cli.server.ensure_api", _reached)


def _assert_one_line_error(code: int, capsys, *needles: str, status: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "BufferError" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _store_is_empty(store: Path) -> bool:
    return not store.exists() or not any(store.rglob("*"))


def test_run_json_contract(prefect_api_url, demo_files, tmp_path, capsys):
    code = main([*_run_args(demo_files, tmp_path / "store"), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["passed"] is True and summary["independent"] is True
    assert "not independent" not in summary["headline"]
    assert (Path(summary["run_dir"]) / "model.mixed.onnx").is_file()
    # How the FP32 set was found: the repair outcome in the JSON and the manifest's plan summary.
    manifest = json.loads((Path(summary["run_dir"]) / "manifest.json").read_text())
    # Repair is on by default; the demo overflows FP16, so the all-FP16 build cannot be the plan.
    assert summary["repair"] == manifest["plan"]["repair"]["outcome"] in ("unchanged", "shrunk", "repaired")
    assert manifest["plan"]["fp32_nodes"] == summary["fp32_nodes"]
    # Against a server, the flow run's page is printed (and in the JSON).
    ui = prefect_api_url.removesuffix("/api")
    assert summary["flow_run_url"].startswith(f"{ui}/runs/flow-run/")
    assert f"flow run: {summary['flow_run_url']}" in out
    # The flow run's log (what the UI shows) has the outcome in fp16guard's words.
    messages = _flow_run_log(summary["flow_run_url"].rsplit("/", 1)[-1])
    assert any(m.startswith("plan: ") and "nodes stay FP32" in m for m in messages), messages
    assert any(m.startswith("release: released") for m in messages), messages
    assert any(m.startswith(f"repair: {summary['repair']} — ") for m in messages), messages
    assert any(m.startswith("artifacts: run folder ") for m in messages), messages


def _flow_run_log(flow_run_id: str, wait_s: float = 30.0) -> list[str]:
    """Messages of a flow run's log as the server has them (logs are shipped in batches)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            messages = [log.message for log in logs]
            if any(m.startswith("artifacts: ") for m in messages) or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)


def test_verification_failure_exits_1(prefect_api_url, demo_files, tmp_path, capsys):
    code = main([*_run_args(demo_files, tmp_path / "store"), "--max-rel-error", "1e-9", "--json"])
    out = capsys.readouterr().out
    assert code == 1, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["passed"] is False and summary["status"] == "rejected" and summary["released"] is False
    assert "relative error" in summary["reason"]
    run_dir = Path(summary["run_dir"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "rejected"
    assert json.loads((run_dir / "verification.json").read_text())["passed"] is False


def test_allowed_overlap_says_not_independent(prefect_api_url, demo_files, tmp_path, capsys):
    """--allow-overlap with the calibration data as holdout: the run goes ahead, and its verdict
    (the summary's first line, the JSON and the manifest) says the holdout is not independent,
    whether it verifies or not (the demo's plan, checked on a calibration slice, need not meet the
    default gate on every calibration sample)."""
    from fp16guard.preflight import NOT_INDEPENDENT

    store = tmp_path / "store"
    args = ["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["calib"], "--name", "demo",
            "--model-version", "1", "--store", str(store), "--no-profile", "--json"]
    code = main([*args, "--allow-overlap"])
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == (0 if summary["passed"] else 1), out
    first = [line for line in out.splitlines() if line.strip() and not line.startswith("flow run:")][0]
    assert first.startswith("VERIFIED" if summary["passed"] else "REJECTED: ") and first.endswith(f"({NOT_INDEPENDENT})"), out
    assert summary["independent"] is False and summary["headline"] == first
    manifest = json.loads((Path(summary["run_dir"]) / "manifest.json").read_text())
    assert NOT_INDEPENDENT in manifest["verdict"]


def _write_npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _overflowing_fp32_model(path: Path) -> Path:
    """y = (x * 1e30) * 1e30: finite input, inf activation already in FP32."""
    big = helper.make_tensor("big", TensorProto.FLOAT, [], [1e30])
    nodes = [helper.make_node("Mul", ["x", "big"], ["h"], name="scale1"), helper.make_node("Mul", ["h", "big"], ["y"], name="scale2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [big])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _wrong_rank(files: dict, tmp: Path) -> Path:
    src = sorted(Path(files["calib"]).glob("*.npz"))[0]
    arrays = {k: v[..., None] for k, v in np.load(src).items()}
    return _write_npz(tmp / "rank.npz", **arrays)


def _nonfinite_shard(files: dict, tmp: Path, role: str) -> Path:
    src = sorted(Path(files[role]).glob("*.npz"))[0]
    arrays = {k: v.copy() for k, v in np.load(src).items()}
    arrays[sorted(arrays)[0]].flat[3] = np.nan
    return _write_npz(tmp / f"nan-{role}.npz", **arrays)


def _args(f: dict, model=None, calib=None, holdout=None, name="m", version="1", *extra) -> list[str]:
    return ["run", str(model or f["model"]), "--calib", str(calib or f["calib"]), "--holdout", str(holdout or f["holdout"]), "--name", name, "--model-version", version, *extra]


BAD_INPUTS = {
    "missing model": (lambda f, t: _args(f, model=t / "nope.onnx"), ["nope.onnx", "does not exist"]),
    "corrupt model": (lambda f, t: _args(f, model=_bytes(t / "bad.onnx", b"not a model")), ["bad.onnx", "not a valid ONNX"]),
    "text file as model": (lambda f, t: _args(f, model=_bytes(t / "notes.txt", b"# a README, not a model\n" * 40)), ["notes.txt", "not a valid ONNX"]),
    "shard without input": (lambda f, t: _args(f, calib=_write_npz(t / "s.npz", other=np.zeros((2, 3), np.float32))), ["s.npz", "has no input"]),
    "wrong rank": (lambda f, t: _args(f, calib=_wrong_rank(f, t)), ["rank"]),
    "NaN in a calibration shard": (lambda f, t: _args(f, calib=_nonfinite_shard(f, t, "calib")), ["nan-calib.npz", "NaN/inf"]),
    "NaN in a holdout shard": (lambda f, t: _args(f, holdout=_nonfinite_shard(f, t, "holdout")), ["nan-holdout.npz", "NaN/inf"]),
    "empty calibration set": (lambda f, t: _args(f, calib=_mkdir(t / "empty")), ["empty", "no .npz"]),
    "threshold out of range": (lambda f, t: _args(f, None, None, None, "m", "1", "--threshold", "70000"), ["threshold", "65504"]),
    "zero threshold": (lambda f, t: _args(f, None, None, None, "m", "1", "--threshold", "0"), ["threshold"]),
    "name escapes store": (lambda f, t: _args(f, name="../../etc"), ["name", "not allowed"]),
    "version escapes store": (lambda f, t: _args(f, version="a/b"), ["version", "not allowed"]),
    "no model at all": (lambda f, t: ["run", "--calib", f["calib"], "--holdout", f["holdout"], "--name", "m", "--model-version", "1"], ["needs MODEL"]),
    "no model version": (lambda f, t: ["run", f["model"], "--calib", f["calib"], "--holdout", f["holdout"], "--name", "m"], ["--model-version"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_before_flow(case, demo_files, tmp_path, capsys, no_server):
    """Caught before any server is contacted: exit 2, one line, nothing in the store."""
    make_args, needles = BAD_INPUTS[case]
    store = tmp_path / "store"
    code = main([*make_args(demo_files, tmp_path), "--store", str(store)])
    _assert_one_line_error(code, capsys, *needles)
    assert _store_is_empty(store)


def test_nan_in_fp32_activation_found_in_flow(prefect_api_url, tmp_path):
    # A subprocess: only a fresh process shows that Prefect's console logging stays off stderr
    # (in this process Prefect is already imported with its console handlers).
    from conftest import run_cli

    model = _overflowing_fp32_model(tmp_path / "inf.onnx")
    shard = _write_npz(tmp_path / "x.npz", x=np.ones((3, 4), np.float32))
    holdout = _write_npz(tmp_path / "h.npz", x=np.full((3, 4), 0.5, np.float32))  # independent of the calibration data
    store = tmp_path / "store"
    proc = run_cli(["run", str(model), "--calib", str(shard), "--holdout", str(holdout), "--name", "m", "--model-version", "1", "--store", str(store)], api_url=prefect_api_url)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(n in lines[0] for n in ("x.npz", "'y'", "NaN/inf")), lines[0]
    assert not list(store.glob("*/*/runs/*")) and not list(store.glob("*/*/.staging/*"))


def test_tensorrt_backend_without_tensorrt_is_bad_input(demo_files, tmp_path, capsys, no_server):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here; this checks the message when it is absent")
    except ImportError:
        pass
    store = tmp_path / "store"
    code = main([*_run_args(demo_files, store), "--backend", "tensorrt"])
    _assert_one_line_error(code, capsys, "tensorrt")
    assert _store_is_empty(store)


@pytest.mark.parametrize("order", ["model first", "model last", "model between", "old --version spelling"])
def test_model_position_and_version_spelling(order, demo_files):
    """MODEL may come before, between or after the options, even after many-valued --calib."""
    f = demo_files
    argv = {
        "model first": ["run", f["model"], "--calib", f["calib"], f["calib"], "--holdout", f["holdout"], "--name", "m", "--model-version", "3"],
        "model last": ["run", "--holdout", f["holdout"], "--name", "m", "--model-version", "3", "--calib", f["calib"], f["calib"], f["model"]],
        "model between": ["run", "--name", "m", "--calib", f["calib"], f["model"], "--holdout", f["holdout"], "--model-version", "3"],
        "old --version spelling": ["run", f["model"], "--calib", f["calib"], "--holdout", f["holdout"], "--name", "m", "--version", "3"],
    }[order]
    from fp16guard.cli.commands.run import parameters_from_args

    params = parameters_from_args(build_parser().parse_args(argv))
    assert params.model == f["model"]
    assert f["model"] not in params.calib and f["model"] not in params.holdout
    assert params.version == "3"


@pytest.mark.parametrize("command", [None, "run", "demo", "stats", "history", "show", "verify-store", "register", "server"])
def test_help_has_a_description_and_the_exit_statuses(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"] if command else ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    usage_end = out.index("\n\n")
    description = out[usage_end:].strip().split("\n\n")[0]
    assert description and not description.startswith(("positional arguments", "options")), out
    for line in ("0  success", "1  run: verification failed", "2  bad input", "3  environment failure"):
        assert line in out, out


@pytest.mark.parametrize("argv", [["run", "m.onnx", "--bogus"], ["nosuch"], ["run", "m.onnx", "--calib"], ["show"]])
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "--help" in lines[0], lines


@pytest.mark.slow
def test_cuda_requested_on_a_cpu_host_claims_no_fp16_speed(prefect_api_url, demo_files, tmp_path, capsys):
    """Issue 19 item 5: ``--providers CUDAExecutionProvider`` without a usable CUDA provider runs
    onnxruntime-cpu with emulation; the manifest says so, no CPU timing is shown as FP16 speed,
    and the fallback warning is printed once."""
    from fp16guard.runners import onnxrt

    if onnxrt.cuda_usable():
        pytest.skip("this machine has a usable CUDA provider")
    onnxrt._WARNED.clear()
    code = main([*_run_args(demo_files, tmp_path / "store"), "--providers", "CUDAExecutionProvider", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    manifest = json.loads((Path(summary["run_dir"]) / "manifest.json").read_text())
    assert manifest["backend"]["implementation"] == "onnxruntime-cpu"
    assert manifest["backend"]["providers"] == ["CPUExecutionProvider"]
    assert manifest["backend"]["requested_providers"][0] == "CUDAExecutionProvider"
    assert manifest["speed"]["judged"] is False
    assert not (manifest.get("profile") or {}).get("fp16_kernels")
    assert "faster than FP32" not in captured.out and "CUDA device" not in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("fp16guard: warning:")]
    assert len(warnings) == 1, warnings
    assert "CUDAExecutionProvider" in warnings[0] and "onnxruntime-cpu" in warnings[0]
