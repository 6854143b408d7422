"""A forced-NaN candidate through the real flow: ``run --json``, verification.json, report.html
and history all say failed, and none shows a finite worst error."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from fp16guard.settings import RunParameters


def _strict_load(text: str):
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_forced_nan_candidate_fails_everywhere(prefect_api_url, demo_files, tmp_path, capsys):
    from fp16guard.cli.commands.run import execute
    from fp16guard.records import worst_rel_error
    from fp16guard.store.audit import history

    store = tmp_path / "store"
    # Every node forced to FP16: the demo model's all-FP16 build gives NaN (fp16guard.examples).
    params = RunParameters(model=demo_files["model"], calib=[demo_files["calib"]], holdout=[demo_files["holdout"]], name="demo", version="nan",
                           store=str(store), plan={"force_fp16_nodes": ".*"})
    assert execute(params, as_json=True) == 1
    out = capsys.readouterr().out
    summary = _strict_load(out.strip().splitlines()[-1])  # run --json: its last line
    assert summary["passed"] is False and summary["worst_rel_error"] == "inf"
    assert "worst relative error: inf" in out

    run_dir = Path(summary["run_dir"])
    verification = _strict_load((run_dir / "verification.json").read_text())
    assert verification["passed"] is False
    bad = [f for f in verification["outputs"].values() if f["nonfinite"]]
    assert bad and all(f["max_rel_error"] is None and f["max_abs_error"] is None for f in bad)
    assert worst_rel_error(verification) == math.inf

    html = (run_dir / "report.html").read_text()
    assert "rejected" in html and html.split("worst relative error")[0].rsplit("<b>", 1)[1].startswith("inf<")
    # The repair table's first check (the rule-based plan, all FP16 here) says non-finite, no figure.
    first = html.split('<table class="repair">')[1].split("</tr>")[1]
    assert re.findall(r'<td class="num">([^<]*)</td>', first)[2].startswith("non-finite") and summary["repair"] is not None

    (row,) = history(str(store), "demo")
    assert row["status"] == "rejected" and row["worst_rel_error"] == math.inf
