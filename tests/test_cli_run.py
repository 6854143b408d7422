"""``fp16guard run`` as a user runs it: exit statuses, the JSON line, one-line errors, no artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import run_cli  # noqa: E402  (tests/ is on sys.path under pytest)


def _run_args(files: dict, store: Path, *extra: str) -> list[str]:
    return ["run", files["model"], "--calib", files["calib"], "--holdout", files["holdout"], "--name", "demo", "--version", "1", "--store", str(store), *extra]


def _assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _store_is_empty(store: Path) -> bool:
    runs = list(store.glob("*/*/runs/*"))
    staged = [p for p in store.glob("*/*/.staging/*")]
    return not runs and not staged


def test_run_json_contract(prefect_api_url, demo_files, tmp_path):
    proc = run_cli([*_run_args(demo_files, tmp_path / "store"), "--json"], api_url=prefect_api_url)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["passed"] is True
    assert (Path(summary["run_dir"]) / "model.mixed.onnx").is_file()


def test_store_defaults_to_env(prefect_api_url, demo_files, tmp_path):
    args = _run_args(demo_files, tmp_path)
    i = args.index("--store")
    del args[i : i + 2]
    store = tmp_path / "from-env"
    proc = run_cli([*args, "--json"], api_url=prefect_api_url, env={"FP16GUARD_STORE": str(store)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["run_dir"].startswith(str(store))


def test_verification_failure_exits_1(prefect_api_url, demo_files, tmp_path):
    proc = run_cli([*_run_args(demo_files, tmp_path / "store"), "--max-rel-error", "1e-9", "--json"], api_url=prefect_api_url)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["passed"] is False and summary["status"] == "rejected" and summary["released"] is False
    assert "relative error" in summary["reason"]
    run_dir = Path(summary["run_dir"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "rejected"
    assert json.loads((run_dir / "verification.json").read_text())["passed"] is False


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


BAD_INPUTS = {
    "missing model": (lambda f, t: ["run", str(t / "nope.onnx"), "--calib", f["calib"], "--holdout", f["holdout"], "--name", "m", "--version", "1"], ["nope.onnx", "does not exist"]),
    "corrupt model": (lambda f, t: ["run", str(_bytes(t / "bad.onnx", b"not a model")), "--calib", f["calib"], "--holdout", f["holdout"], "--name", "m", "--version", "1"], ["bad.onnx", "not a valid ONNX"]),
    "shard without input": (lambda f, t: ["run", f["model"], "--calib", str(_write_npz(t / "s.npz", other=np.zeros((2, 3), np.float32))), "--holdout", f["holdout"], "--name", "m", "--version", "1"], ["s.npz", "has no input"]),
    "wrong rank": (lambda f, t: ["run", f["model"], "--calib", str(_wrong_rank(f, t)), "--holdout", f["holdout"], "--name", "m", "--version", "1"], ["rank"]),
    "empty calibration set": (lambda f, t: ["run", f["model"], "--calib", str(_mkdir(t / "empty")), "--holdout", f["holdout"], "--name", "m", "--version", "1"], ["empty", "no .npz"]),
    "threshold out of range": (lambda f, t: ["run", f["model"], "--calib", f["calib"], "--holdout", f["holdout"], "--name", "m", "--version", "1", "--threshold", "70000"], ["threshold", "65504"]),
    "zero threshold": (lambda f, t: ["run", f["model"], "--calib", f["calib"], "--holdout", f["holdout"], "--name", "m", "--version", "1", "--threshold", "0"], ["threshold"]),
    "name escapes store": (lambda f, t: ["run", f["model"], "--calib", f["calib"], "--holdout", f["holdout"], "--name", "../../etc", "--version", "1"], ["name", "not allowed"]),
    "version escapes store": (lambda f, t: ["run", f["model"], "--calib", f["calib"], "--holdout", f["holdout"], "--name", "m", "--version", "a/b"], ["version", "not allowed"]),
}


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


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_before_flow(case, demo_files, tmp_path):
    """Caught before any server is contacted: exit 2, one line, nothing in the store."""
    make_args, needles = BAD_INPUTS[case]
    store = tmp_path / "store"
    proc = run_cli([*make_args(demo_files, tmp_path), "--store", str(store)], env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    _assert_one_line_error(proc, *needles)
    assert _store_is_empty(store)


def test_nan_in_data_found_in_flow(prefect_api_url, demo_files, tmp_path):
    src = sorted(Path(demo_files["calib"]).glob("*.npz"))[0]
    arrays = {k: v.copy() for k, v in np.load(src).items()}
    key = sorted(arrays)[0]
    arrays[key].flat[0] = np.inf
    bad = _write_npz(tmp_path / "nan.npz", **arrays)
    store = tmp_path / "store"
    proc = run_cli(["run", demo_files["model"], "--calib", str(bad), "--holdout", demo_files["holdout"], "--name", "m", "--version", "1", "--store", str(store)], api_url=prefect_api_url)
    _assert_one_line_error(proc, "nan.npz", key)
    assert _store_is_empty(store)


def test_nan_in_fp32_activation_found_in_flow(prefect_api_url, tmp_path):
    model = _overflowing_fp32_model(tmp_path / "inf.onnx")
    shard = _write_npz(tmp_path / "x.npz", x=np.ones((3, 4), np.float32))
    store = tmp_path / "store"
    proc = run_cli(["run", str(model), "--calib", str(shard), "--holdout", str(shard), "--name", "m", "--version", "1", "--store", str(store)], api_url=prefect_api_url)
    _assert_one_line_error(proc, "x.npz", "'y'", "NaN/inf")
    assert _store_is_empty(store)


def test_tensorrt_backend_without_tensorrt_is_bad_input(demo_files, tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here; this checks the message when it is absent")
    except ImportError:
        pass
    store = tmp_path / "store"
    proc = run_cli([*_run_args(demo_files, store), "--backend", "tensorrt"], env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    _assert_one_line_error(proc, "tensorrt")
    assert _store_is_empty(store)
