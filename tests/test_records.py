"""Typed records: one worst-error definition, strict JSON, and a NaN candidate that reads as
failed with no in-gate figure in verification.json, the report, the UI summary and history."""

from __future__ import annotations

import json
import re
import math

import numpy as np
import onnx
import pyarrow as pa
import pytest
from onnx import TensorProto, helper

from fp16guard.records import Manifest, OutputFigures, VerificationReport, dumps, read_float, worst_rel_error, write_json


def _strict_load(text: str):
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_worst_rel_error_is_one_definition():
    fig = lambda **kw: {"kind": "float", "nonfinite": 0, **kw}  # noqa: E731
    assert worst_rel_error({"outputs": {"a": fig(max_rel_error=0.01), "b": fig(max_rel_error=0.03)}}) == pytest.approx(0.03)
    # Any NaN/inf output makes it unbounded, whatever the other outputs say.
    assert worst_rel_error({"outputs": {"a": fig(max_rel_error=0.01), "b": fig(max_rel_error=None, nonfinite=3)}}) == math.inf
    # An output that could not be compared is not a small error either.
    assert worst_rel_error({"outputs": {"a": fig(max_rel_error=0.01), "z": {"kind": "unknown", "error": "missing from the candidate's outputs"}}}) == math.inf
    # Integer outputs are judged by mismatches, not here; no float figures at all: None.
    assert worst_rel_error({"outputs": {"i": {"kind": "exact", "mismatches": 0, "mismatch_fraction": 0.0}}}) is None
    assert worst_rel_error({}) is None and worst_rel_error({"passed": False, "outputs": {}}) is None
    # The same answer from the record and from the dict.
    report = {"outputs": {"a": fig(max_rel_error=0.5)}}
    assert VerificationReport.from_dict(report).worst_rel_error == worst_rel_error(report) == 0.5


def test_old_nan_report_is_corrected_when_read():
    # Written before the fix: an all-NaN output read max_rel_error 0.0 (perfect).
    old = {"passed": False, "reason": "output 'y': 8 of 8 candidate values are NaN/inf", "outputs": {"y": {"kind": "float", "elements": 8, "nonfinite": 8, "max_abs_error": 0.0, "max_rel_error": 0.0, "cosine": None}}}
    rec = VerificationReport.from_dict(old)
    y = rec.outputs["y"]
    assert y.max_rel_error is None and y.max_abs_error is None and y.cosine is None and not y.bounded
    assert rec.worst_rel_error == math.inf
    assert _strict_load(dumps(rec))["outputs"]["y"]["max_rel_error"] is None


def test_strict_json_and_read_back(tmp_path):
    text = dumps({"w": math.inf, "m": -math.inf, "n": math.nan, "x": 0.25, "np": np.float32(1.5), "t": (1, 2)})
    assert _strict_load(text) == {"w": "inf", "m": "-inf", "n": None, "x": 0.25, "np": 1.5, "t": [1, 2]}
    assert [read_float(v) for v in ("inf", "-inf", None, 0.25, "nan", True, "x")] == [math.inf, -math.inf, None, 0.25, None, None, None]
    path = write_json(tmp_path / "r.json", {"worst": math.inf})
    assert _strict_load(path.read_text()) == {"worst": "inf"}


def test_records_round_trip_and_keep_unknown_keys():
    report = {"passed": True, "reason": None, "samples": 4, "shards": ["a"], "tolerances": {"max_rel_error": 0.02},
              "outputs": {"y": {"kind": "float", "dtype": "float32", "elements": 8, "nonfinite": 0, "max_abs_error": 0.1, "max_rel_error": 0.01,
                                "cosine": 0.9999, "ref_max_abs": 10.0, "candidate_max_abs": 10.1, "passed": True, "placement": "gpu"}},
              "execution": "onnxruntime CPUExecutionProvider", "engine_check": []}
    again = VerificationReport.from_dict(report).to_dict()
    assert again == report
    manifest = {"schema": 1, "run_id": "r", "name": "m", "version": "1", "status": "verified", "outputs": {"plan.json": {"sha256": "ab", "bytes": 3}}, "future": {"k": 1}}
    rec = Manifest.from_dict(manifest)
    rec.add_output("report.html", {"sha256": "cd", "bytes": 9})
    out = rec.to_dict()
    assert out["future"] == {"k": 1} and out["outputs"]["report.html"] == {"sha256": "cd", "bytes": 9} and out["outputs"]["plan.json"]["sha256"] == "ab"
    with pytest.raises(ValueError, match="status"):
        Manifest.from_dict({**manifest, "status": "maybe"})
    with pytest.raises(ValueError, match="sha256"):
        Manifest.from_dict({**manifest, "outputs": {"x": {"bytes": 1}}})
    assert OutputFigures(kind="float", max_rel_error=math.inf).max_rel_error is None  # never a number


# ------------------------------------------------------------------ a forced-NaN candidate, end to end


def _model(nodes, inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=list(inits)), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def nan_report(tmp_path_factory):
    """verify() of a candidate whose every output value is NaN: sqrt(-(|x| + 1))."""
    from fp16guard.io.shards import ShardRef
    from fp16guard.settings import VerifySettings
    from fp16guard.verify.compare import verify

    d = tmp_path_factory.mktemp("nan")
    np.savez(d / "h.npz", x=np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    ref = _model([helper.make_node("Identity", ["x"], ["y"], name="id")])
    one = onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one")
    cand = _model(
        [helper.make_node("Abs", ["x"], ["a"], name="abs"), helper.make_node("Add", ["a", "one"], ["b"], name="add"),
         helper.make_node("Neg", ["b"], ["c"], name="neg"), helper.make_node("Sqrt", ["c"], ["y"], name="sqrt")],
        [one],
    )
    # Tolerances loose enough that only the NaN rule can fail it.
    return verify(ref, cand, [ShardRef(str(d / "h.npz"), str(d / "h.npz"))], VerifySettings(max_rel_error=1.0, min_cosine=-1.0))


def test_nan_candidate_in_verification_json(nan_report, tmp_path):
    y = nan_report["outputs"]["y"]
    assert y["nonfinite"] == y["elements"] == 12
    # Fixed at the source: no figure over the (zero) finite values.
    assert y["max_rel_error"] is None and y["max_abs_error"] is None and y["cosine"] is None
    assert nan_report["passed"] is False and y["passed"] is False and "NaN/inf" in nan_report["reason"]
    loaded = _strict_load(write_json(tmp_path / "verification.json", VerificationReport.from_dict(nan_report)).read_text())
    assert loaded["passed"] is False and loaded["outputs"]["y"]["max_rel_error"] is None
    assert worst_rel_error(loaded) == math.inf


def test_nan_candidate_in_report_html(nan_report):
    from fp16guard.report.html import render_report

    html = render_report(None, {}, nan_report, {"name": "m", "version": "1"})
    assert "rejected" in html
    card = html.split("worst relative error")[0].rsplit("<b>", 1)[1]
    assert card.startswith("inf<"), card
    row = html.split("<td><code>y</code></td>", 1)[1].split("</tr>", 1)[0]
    # Error cells show no figure ("—") and the row is marked bad; the only numbers are counts.
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    assert cells[:3] == ["—", "—", "—"] and cells[3] == "12", cells


def test_nan_candidate_in_ui_summary(nan_report):
    from fp16guard.report.summary import summary_markdown

    stats = pa.table({"tensor": ["y"], "producer": ["sqrt"], "op_type": ["Sqrt"], "max_abs": [1.0]})
    md = summary_markdown("m", "1", {"run_id": "r"}, {"threshold": 10000.0, "fp32_nodes": []}, nan_report, stats)
    assert "❌ rejected" in md and "- worst relative error: inf" in md
    assert "| `y` | — | — | — | 12 | 0 | 0 | 0 | numeric |" in md  # NaN never agrees


def test_nan_candidate_in_history(nan_report, tmp_path, capsys):
    from fp16guard.cli.main import main
    from fp16guard.store.audit import history
    from fp16guard.store.runs import Store

    store = Store(tmp_path / "store")
    with store.stage_run("m", "1", "r1") as staged:
        write_json(staged.path / "verification.json", VerificationReport.from_dict(nan_report))
        write_json(staged.path / "manifest.json", {"created": "2026-01-01T00:00:00Z", "outputs": {}, "inputs": {}})
        staged.commit(verified=False, reason=nan_report["reason"])
    (row,) = history(store, "m")
    assert row["status"] == "rejected" and row["worst_rel_error"] == math.inf
    assert main(["history", "m", "--store", str(tmp_path / "store"), "--json"]) == 0
    runs = _strict_load(capsys.readouterr().out)["runs"]
    assert runs[0]["worst_rel_error"] == "inf"
    assert main(["history", "m", "--store", str(tmp_path / "store")]) == 0
    table = capsys.readouterr().out
    assert " inf " in table and "rejected" in table



