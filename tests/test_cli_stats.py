"""``fp16guard stats`` end to end: outputs, summary, bad input (exit 2, no file), imports, progress."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.cli.main import main
from fp16guard.progress import Progress
from fp16guard.stats.collect import read_shard_stats, read_stats

REPO = Path(__file__).resolve().parents[1]
F = TensorProto.FLOAT


@pytest.fixture()
def case(tmp_path):
    """An overflowing model (x*1000 then MatMul) and two shards in a folder."""
    w = numpy_helper.from_array(np.full((4, 4), 30.0, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["big"], name="mm"), helper.make_node("Relu", ["big"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 4])],
        [helper.make_tensor_value_info("y", F, ["N", 4])],
        [w],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    calib = tmp_path / "calib"
    calib.mkdir()
    np.savez(calib / "a.npz", x=np.ones((2, 4), np.float32))
    np.savez(calib / "b.npz", x=np.full((3, 4), 1000.0, np.float32))  # 4 * 30 * 1000 = 120000 > 65504
    return model, calib


def test_stats_writes_tables_and_prints_summary(case, tmp_path, capsys):
    model, calib = case
    out, shards = tmp_path / "out" / "stats.parquet", tmp_path / "shard_stats.parquet"
    code = main(["stats", str(model), "--calib", str(calib), "--out", str(out), "--shard-stats", str(shards), "--batch-size", "2"])
    assert code == 0
    rows = {r["tensor"]: r for r in read_stats(out).to_pylist()}
    assert rows["big"]["max_abs"] == 120000.0 and rows["big"]["max_shard"].endswith("b.npz")
    assert rows["big"]["shards"] == 2 and rows["big"]["samples"] == 5
    assert read_shard_stats(shards).num_rows == 2 * 3
    printed = capsys.readouterr().out
    assert "3 float tensors" in printed and "2 exceed the FP16 maximum" in printed and "big" in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["MISSING", "--calib", "CALIB"], "does not exist"),
        (["MODEL", "--calib", "NOWHERE"], "does not exist"),
        (["CORRUPT", "--calib", "CALIB"], "not a valid ONNX"),
        (["MODEL", "--calib", "WRONG"], "has no input 'x'"),
        (["MODEL", "--calib", "NAN"], "NaN/inf"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_output(case, tmp_path, capsys, args, message):
    model, calib = case
    (tmp_path / "corrupt.onnx").write_bytes(b"\x0a\xff\xff\xff")
    np.savez(tmp_path / "wrong.npz", z=np.ones((1, 4), np.float32))
    np.savez(tmp_path / "nan.npz", x=np.full((1, 4), np.nan, np.float32))
    subst = {
        "MISSING": str(tmp_path / "missing.onnx"),
        "MODEL": str(model),
        "CORRUPT": str(tmp_path / "corrupt.onnx"),
        "CALIB": str(calib),
        "NOWHERE": str(tmp_path / "nowhere"),
        "WRONG": str(tmp_path / "wrong.npz"),
        "NAN": str(tmp_path / "nan.npz"),
    }
    out = tmp_path / "stats.parquet"
    code = main(["stats", *[subst.get(a, a) for a in args], "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".stats")]


def test_nonfinite_activation_exits_2_naming_the_tensor(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["logx"], name="log")],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 2])],
        [helper.make_tensor_value_info("logx", F, ["N", 2])],
    )
    model = tmp_path / "log.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    np.savez(tmp_path / "zero.npz", x=np.zeros((1, 2), np.float32))
    code = main(["stats", str(model), "--calib", str(tmp_path / "zero.npz"), "--out", str(tmp_path / "s.parquet")])
    assert code == 2
    assert "'logx'" in capsys.readouterr().err and not (tmp_path / "s.parquet").exists()


def test_stats_command_does_not_import_prefect(case, tmp_path):
    model, calib = case
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fp16guard.cli.main", "stats", str(model), "--calib", str(calib), "--out", str(tmp_path / "s.parquet")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported  # the check itself works
    assert "prefect" not in imported and "polygraphy" not in imported


def test_progress_draws_only_on_a_terminal():
    quiet = io.StringIO()
    with Progress(2, stream=quiet) as bar:
        bar.advance("a")
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    with Progress(2, stream=shown, force=True) as bar:
        bar.advance("a.npz")
        bar.advance("b.npz")
    text = shown.getvalue()
    assert "2/2" in text and "b.npz" in text and text.endswith("\n")


def test_progress_shows_an_eta_once_a_step_is_done():
    import io

    from fp16guard.progress import Progress

    shown = io.StringIO()
    with Progress(4, "holdout shards", stream=shown, force=True) as bar:
        bar.advance("a")
    assert "1/4" in shown.getvalue() and "ETA" in shown.getvalue()
