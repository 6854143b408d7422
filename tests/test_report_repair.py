"""How the FP32 set was found, in every view of a run: the manifest's ``plan`` summary,
``report.html``'s section (one row per repair iteration), the UI summary and flow log lines, and
``fp16guard run``'s human summary. A repair iteration whose candidate had NaN/inf outputs shows
``non-finite``, never a finite error figure. Pure functions over a plan dict: no Prefect server."""

from __future__ import annotations

import html as htmllib
import re

import pyarrow as pa

from fp16guard.plan.records import Plan
from fp16guard.records import Manifest
from fp16guard.report.html import render_report
from fp16guard.report.outcome import outcome_lines
from fp16guard.report.plan_summary import plan_summary, repair_line, strategy_line
from fp16guard.report.summary import summary_markdown

ADDED = [{"name": f"conv_{i}", "op_type": "Conv", "local_error": None, "why": f"the FP16 error appears at its output 'c{i}' (repair iteration 1)"} for i in range(5)]
PLAN = {
    "threshold": 10000.0,
    "counts": {"nodes": 40, "fp32": 8},
    "fp32_nodes": [
        {"name": "pow|1", "op_type": "Pow", "reason": "output_above_threshold", "details": ["output 'p' max |x| 2e5 > 10000"]},
        {"name": "log", "op_type": "Log", "reason": "underflow", "details": ["input 'e' underflows"]},
        {"name": "log2", "op_type": "Log", "reason": "underflow", "details": ["input 'e2' underflows"]},
    ] + [{"name": a["name"], "op_type": "Conv", "reason": "repair_precision", "details": [a["why"]]} for a in ADDED]
      + [{"name": "mul", "op_type": "Mul", "reason": "repair_precision", "details": ["feeds 'x' to 'log' (repair iteration 2)"]}],
    "strategy": {"requested": "auto", "used": "fold", "why": "folding keeps 1 compute nodes FP32 against 3 when pinning", "compute_fp32": {"pin": 3, "fold": 1}},
    "folding": {
        "batchnorm": [],
        "exponents": {"a": 6, "b": 6, "z": 3},
        "regions": [
            {"tensors": 2, "first": "a", "last": "b", "exponent": 6, "scale": 64, "status": "folded", "why": "max |x| = 3e6 at 'a' > threshold 10000: stored divided by 2**6"},
            {"tensors": 1, "first": "z", "last": "z", "exponent": 3, "scale": 8, "status": "folded", "why": "max |x| = 7e4 at 'z' > threshold 10000: stored divided by 2**3"},
            {"tensors": 1, "first": "q", "last": "q", "exponent": 0, "scale": 1, "status": "refused", "why": "needs 2**20, beyond the largest folded scale 2**14"},
        ],
        "restores": [],
        "notes": [],
    },
    "repair": {
        "outcome": "repaired",
        "message": "6 node(s) pinned to FP32 in 2 iteration(s), 59.2 s; the plan now passes on 32 calibration samples",
        "samples": 32,
        "seconds": 59.2,
        "steps": [
            {"iteration": 0, "fp32_nodes": 3, "passed": False, "worst_rel_error": None, "nonfinite": 123457, "reason": "output 'y': 123457 NaN/inf", "seconds": 30.5, "added": ADDED},
            {"iteration": 1, "fp32_nodes": 8, "passed": False, "worst_rel_error": 0.0731, "nonfinite": 0, "reason": "output 'y' max rel error 0.0731 > 0.01", "seconds": 20.1,
             "added": [{"name": "mul", "op_type": "Mul", "local_error": None, "why": "feeds 'x' to 'log' (FP32) (repair iteration 2)"}]},
            {"iteration": 2, "fp32_nodes": 9, "passed": True, "worst_rel_error": 0.00412, "nonfinite": 0, "reason": "", "seconds": 8.6, "added": []},
        ],
    },
}
VERIFICATION = {"passed": True, "reason": None, "outputs": {"y": {"kind": "float", "max_abs_error": 0.001, "max_rel_error": 0.004, "cosine": 0.99999, "nonfinite": 0}}}
STATS = pa.table({"tensor": ["p", "y"], "producer": ["pow|1", "sm"], "op_type": ["Pow", "Softmax"], "order": [0, 1], "max_abs": [2e5, 1.0]})


def test_plan_summary_counts_reasons_repair_and_folding():
    Plan.from_dict(PLAN)  # the fixture is a valid plan.json
    s = plan_summary(PLAN)
    assert s["strategy"] == "fold" and s["strategy_requested"] == "auto"
    assert s["fp32_nodes"] == 9
    assert s["fp32_by_reason"] == {"repair_precision": 6, "underflow": 2, "output_above_threshold": 1}
    assert s["repair"] == {
        "outcome": "repaired", "iterations": 2, "seconds": 59.2, "samples": 32, "nodes_added": 6, "nodes_returned": 0, "checks": 0,
        "fp32_flops_share": None, "stability": None, "message": PLAN["repair"]["message"],
    }
    assert s["folding"] == {"regions": 2, "refused": 1, "max_exponent": 6, "max_scale": 64}
    assert plan_summary({"threshold": 1.0, "fp32_nodes": []})["repair"] is None


def test_lines_for_the_log_and_the_cli():
    assert repair_line(PLAN) == "repair: repaired — 6 nodes pinned in 2 iterations, 59 s"
    searched = {**PLAN, "repair": {**PLAN["repair"], "checks": 14, "returned": ["a", "b"]}}
    assert repair_line(searched) == "repair: repaired — 6 nodes pinned in 2 iterations, 2 nodes given back to FP16 in 14 checks, 59 s"
    all16 = {**PLAN, "repair": {**PLAN["repair"], "outcome": "all_fp16", "returned": ["a"], "seconds": 1.5}}
    assert repair_line(all16) == "repair: all_fp16 — the all-FP16 build passed on 32 calibration samples; 1 node given back to FP16, 1.5 s"
    assert strategy_line(PLAN).startswith("strategy: fold (requested auto: folding keeps 1")
    assert "2 regions folded, largest scale 64 (2^6)" in strategy_line(PLAN)
    unchanged = {**PLAN, "repair": {"outcome": "unchanged", "message": "", "samples": 16, "seconds": 2.04, "steps": []}}
    assert repair_line(unchanged) == "repair: unchanged — the rule-based plan passed on 16 calibration samples, 2.0 s"
    spent = {**PLAN, "repair": {**PLAN["repair"], "outcome": "budget_spent", "message": "still failing after 2 repair iteration(s)"}}
    assert repair_line(spent).endswith("pinned in 2 iterations, 59 s; still failing after 2 repair iteration(s)")
    lines = outcome_lines("m", "1", {"run_dir": "/s/r", "released": True, "release_reason": "first"}, PLAN, VERIFICATION)
    assert lines[0].startswith("plan: 9 of 40 nodes stay FP32") and lines[1].startswith("strategy: fold") and lines[2] == repair_line(PLAN)
    assert lines[3].startswith("verification of m/1") and lines[-1].startswith("artifacts:")
    # A plan without strategy or repair keeps the four lines it always had.
    assert len(outcome_lines("m", "1", {}, {"threshold": 1.0, "fp32_nodes": []}, VERIFICATION)) == 4


def _repair_rows(page: str) -> list[list[str]]:
    table = re.search(r'<table class="repair">(.*?)</table>', page, flags=re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)[1:]
    return [[htmllib.unescape(re.sub(r"<[^>]+>", " ", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S)] for r in rows]


def test_report_has_how_the_fp32_set_was_found():
    manifest = {"name": "m", "version": "1", "run_id": "r", "plan": plan_summary(PLAN)}
    page = render_report(STATS, PLAN, VERIFICATION, manifest)
    assert "How the FP32 set was found" in page
    assert "Strategy: fold (requested auto: folding keeps 1 compute nodes FP32 against 3 when pinning)" in page
    assert "Rules: 3 nodes FP32 (underflow 2, output_above_threshold 1)" in page
    assert "Repair: 6 nodes added" in page and "<b>Repair repaired:</b> 6 node(s) pinned" in page
    rows = _repair_rows(page)
    assert [r[0] for r in rows] == ["0", "1", "2"] and [r[1] for r in rows] == ["3", "8", "9"] and [r[3] for r in rows] == ["no", "no", "yes"]
    # The NaN candidate: "non-finite", and no finite number in its error cell.
    assert rows[0][2] == "non-finite (123457 elements)"
    assert not re.search(r"\d\.\d|\de-", rows[0][2])
    assert rows[1][2] == "0.0731" and rows[2][2] == "0.00412"
    # First three added nodes with why, then "+N more"; seconds per iteration.
    assert "conv_0 (Conv): the FP16 error appears at its output 'c0'" in rows[0][4] and "conv_2 (Conv)" in rows[0][4]
    assert "conv_3" not in rows[0][4] and rows[0][4].endswith("+2 more")
    assert rows[1][4].startswith("mul (Mul): feeds 'x' to 'log'") and rows[2][4] == ""
    assert [r[5] for r in rows] == ["30 s", "20 s", "8.6 s"]
    # Folding: the folded regions with their scales, the refused one counted.
    assert "Folded scale regions (2; 1 refused)" in page and "2**6 (= 64)" in page and "2**3 (= 8)" in page


def test_report_escapes_repair_text_and_skips_absent_sections():
    evil = {**PLAN, "repair": {**PLAN["repair"], "message": "<script>alert(1)</script>"}}
    page = render_report(None, evil, VERIFICATION, {})
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    plain = render_report(None, {"threshold": 1.0, "fp32_nodes": []}, VERIFICATION, {})
    assert "Repair did not run for this plan." in plain and "Folded scale regions" not in plain and "Strategy:" not in plain


def test_summary_markdown_has_repair_and_strategy_and_safe_tables():
    pipe = {**PLAN, "repair": {**PLAN["repair"], "steps": [{**PLAN["repair"]["steps"][0], "added": [{"name": "a|b", "op_type": "Add", "why": "x"}]}, *PLAN["repair"]["steps"][1:]]}}
    md = summary_markdown("m", "1", {"run_id": "r"}, pipe, VERIFICATION, STATS)
    assert "- repair: repaired — 2 nodes pinned in 2 iterations, 59 s" in md and "- strategy: fold" in md
    assert "## Repair: repaired" in md
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 3
    assert rows[0].startswith("| 0 | 3 | non-finite (123457 elements) | no | a\\|b (Add) | 30 s |")
    assert "| 1 | 8 | 0.0731 | no | mul (Mul) | 20 s |" in md
    for table in re.findall(r"((?:^\|.*\|\n)+)", md, flags=re.M):
        cells = [len(re.findall(r"(?<!\\)\|", row)) for row in table.strip().splitlines()]
        assert len(set(cells)) == 1, table


def test_manifest_keeps_the_plan_summary():
    base = {"schema": 1, "run_id": "r", "name": "m", "version": "1", "status": "verified", "outputs": {}}
    rec = Manifest.from_dict({**base, "plan": plan_summary(PLAN)})
    out = rec.to_dict()
    assert out["plan"]["repair"]["outcome"] == "repaired" and out["plan"]["repair"]["nodes_added"] == 6
    assert out["plan"]["folding"]["max_scale"] == 64 and out["plan"]["fp32_by_reason"]["underflow"] == 2
    assert Manifest.from_dict(out).to_dict() == out
    assert "plan" not in Manifest.from_dict(base).to_dict()  # older manifests round-trip unchanged


def test_cli_human_summary_says_repair(capsys):
    from fp16guard.cli.commands.run import print_summary

    print_summary({"passed": True, "fp32_nodes": 9, "repair": "repaired", "repair_summary": repair_line(PLAN), "worst_rel_error": 0.004})
    out = capsys.readouterr().out
    assert "  repair:               repaired — 6 nodes pinned in 2 iterations, 59 s" in out
