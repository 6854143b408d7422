"""What the Prefect UI shows of a run: the outcome lines in the flow run's log, the summary's
markdown tables (a ``|x|`` in a reason must not break them), and a report link a browser can open
(a real presigned URL against the moto S3 server; none, with the reason, for a local store)."""

from __future__ import annotations

import re

import httpx
import pyarrow as pa

from fixtures_s3 import s3_root, s3_server, write_run_files  # noqa: F401
from fp16guard.report.outcome import outcome_lines, report_link
from fp16guard.report.summary import summary_markdown
from fp16guard.store.runs import Store

PLAN = {
    "threshold": 10000.0,
    "counts": {"nodes": 12},
    "fp32_nodes": [
        {"name": "mm|1", "op_type": "MatMul", "reason": "output_above_threshold", "details": ["output 'h' max |x| 1.2e5 > 10000"]},
        {"name": "sm", "op_type": "Softmax", "reason": "input_above_threshold", "details": ["input 'h' max |x| 1.2e5 > 10000"]},
    ],
}
RESULT = {"run_id": "r1", "run_dir": "/s/m/1/runs/r1", "released": True, "release_reason": "first verified run of m/1", "report": "/s/m/1/runs/r1/report.html"}
STATS = pa.table({"tensor": ["h", "y"], "producer": ["mm|1", "sm"], "op_type": ["MatMul", "Softmax"], "max_abs": [1.2e5, 1.0]})


def _verification(nonfinite: int = 0) -> dict:
    return {
        "passed": not nonfinite,
        "reason": "" if not nonfinite else "output 'y': 40 of 40 candidate values are NaN/inf",
        "execution": "onnxruntime CPU, FP16 storage emulated",
        "outputs": {"y": {"kind": "float", "max_abs_error": 0.0 if nonfinite else 0.002, "max_rel_error": 0.0 if nonfinite else 0.0023,
                          "cosine": 0.99999, "nonfinite": nonfinite, "ref_max_abs": 1.0}},
    }


def test_outcome_lines_say_plan_figures_release_and_where():
    lines = outcome_lines("m", "1", RESULT, PLAN, _verification())
    assert lines[0] == "plan: 2 of 12 nodes stay FP32 (threshold 10000.0; output_above_threshold 1, input_above_threshold 1)"
    assert "verified" in lines[1] and "worst relative error 0.0023 (output 'y')" in lines[1] and "min cosine 0.99999" in lines[1]
    assert lines[2] == "release: released (first verified run of m/1)"
    assert "/s/m/1/runs/r1" in lines[3] and "report.html" in lines[3]


def test_outcome_of_a_nan_candidate_has_no_finite_figure():
    line = outcome_lines("m", "1", {**RESULT, "released": False, "release_reason": "verification failed"}, PLAN, _verification(nonfinite=40))[1]
    assert "against FP32: rejected: " in line and "FAILED" not in line and "unbounded" in line and "0.0" not in line.split("worst relative error")[1]


def test_summary_tables_survive_pipes_in_text():
    md = summary_markdown("m", "1", RESULT, PLAN, _verification(), STATS)
    for table in re.findall(r"((?:^\|.*\|\n)+)", md, flags=re.M):
        rows = table.strip().splitlines()
        cells = [len(re.findall(r"(?<!\\)\|", row)) for row in rows]
        assert len(set(cells)) == 1, rows  # every row has the header's number of cell borders
    assert r"max \|x\| 1.2e5" in md


def _run_with_report(store: Store) -> None:
    with store.stage_run("m", "1", "r1") as staged:
        write_run_files(staged.path)
        (staged.path / "report.html").write_text("<html>the report</html>")
        staged.commit(verified=True, reason="")


def test_report_link_local_store_says_where_the_file_is(tmp_path):
    store = Store(str(tmp_path / "store"))
    _run_with_report(store)
    url, note = report_link(store, "m", "1", "r1")
    assert url is None and str(tmp_path / "store") in note and "report.html" in note


def test_report_link_object_store_is_a_presigned_url_a_browser_can_open(s3_root):  # noqa: F811
    store = Store(s3_root)
    _run_with_report(store)
    url, note = report_link(store, "m", "1", "r1", expires_s=600)
    assert url and url.startswith("http") and "Signature" in url, (url, note)
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200 and response.text == "<html>the report</html>"
    assert httpx.get(url.split("?")[0], timeout=30).status_code in (401, 403)  # the signature is what opens it
