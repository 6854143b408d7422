"""The honest verdict (issue 17, item 5): FP16 share of the estimated FLOPs everywhere a run is
shown, the low-share warning on the first line, the GPU speed verdict, and the release gate's
``min_fp16_share`` / ``min_speedup``.

Unit tests on records, then real runs of the demo through ``fp16guard run`` (real onnxruntime,
a real Prefect server)."""

from __future__ import annotations

import json
from pathlib import Path

from fp16guard.cli.main import main
from fp16guard.records import Manifest
from fp16guard.report.html import render_report
from fp16guard.report.summary import summary_markdown
from fp16guard.report.verdict import LOW_FP16_SHARE, headline, speed_verdict
from fp16guard.store.gate import release_gate

SHARE_LOW = {"flops_total": 1000.0, "flops_fp16": 30.0, "share_flops": 0.03, "compute_nodes_total": 4, "compute_nodes_fp16": 1,
             "nodes_total": 20, "nodes_fp32": 12, "summary": "FP16 runs 3% of the estimated FLOPs (1 of 4 Conv/Gemm/MatMul nodes)"}
SHARE_NONE = {**SHARE_LOW, "flops_fp16": 2.0, "share_flops": 0.002, "compute_nodes_fp16": 0}
SHARE_HIGH = {**SHARE_LOW, "flops_fp16": 970.0, "share_flops": 0.97, "compute_nodes_fp16": 4}


def _profile(fp32: float, artifact: float, all_fp16: float, gpu: bool = True, batch: int = 16) -> dict:
    gain = fp32 - all_fp16
    return {
        "measured": True, "device": "NVIDIA H200" if gpu else "cpu", "fp16_kernels": gpu, "tf32": True,
        "batches": [
            {"batch": 1, "fp32_ms": 1.0, "artifact_ms": 1.0, "all_fp16_ms": 1.0, "speedup": 1.0, "fp16_speedup": 1.0, "gain_kept": None},
            {"batch": batch, "fp32_ms": fp32, "artifact_ms": artifact, "all_fp16_ms": all_fp16, "speedup": round(fp32 / artifact, 3),
             "fp16_speedup": round(fp32 / all_fp16, 3), "gain_kept": round((fp32 - artifact) / gain, 3) if gain > 0.05 * fp32 else None},
        ],
    }


def test_headline_warns_on_low_share_and_on_the_fp32_model():
    assert LOW_FP16_SHARE == 0.5
    assert headline(True, None, SHARE_HIGH) == "VERIFIED: artifact matches FP32 within tolerance"
    assert headline(True, None, SHARE_LOW) == "VERIFIED — but only 3% of the arithmetic runs in FP16: this is nearly the FP32 model"
    assert headline(True, None, SHARE_NONE).startswith("VERIFIED — but no Conv/Gemm/MatMul node runs in FP16")
    assert headline(True, None, SHARE_NONE).endswith("the artifact is the FP32 model")
    assert headline(False, "output 'y' max rel error 0.3 > 0.02", SHARE_LOW) == "REJECTED: output 'y' max rel error 0.3 > 0.02"
    assert headline(True) == "VERIFIED: artifact matches FP32 within tolerance"  # no share estimated: nothing claimed


def test_headline_says_not_independent_when_the_holdout_overlaps():
    from fp16guard.preflight import NOT_INDEPENDENT

    assert headline(True, None, SHARE_HIGH, independent=False) == f"VERIFIED: artifact matches FP32 within tolerance ({NOT_INDEPENDENT})"
    assert headline(True, None, SHARE_LOW, independent=False).endswith(f"this is nearly the FP32 model ({NOT_INDEPENDENT})")
    assert headline(False, "output 'y' max rel error 0.3 > 0.02", independent=False) == f"REJECTED: output 'y' max rel error 0.3 > 0.02 ({NOT_INDEPENDENT})"
    assert "not independent" not in headline(True, None, SHARE_HIGH)


def test_overlap_of_discovered_shards_same_file_and_same_content(tmp_path):
    import numpy as np

    from fp16guard.io.shards import discover_shards, shard_digest
    from tasks.inputs import holdout_overlap

    def shards(*paths):
        return [{"shard": ref, "sha256": shard_digest(ref)} for ref in discover_shards([str(p) for p in paths], "test")]

    for name, value in (("a", 1.0), ("copy", 1.0), ("b", 2.0)):
        np.savez(tmp_path / f"{name}.npz", x=np.full((2, 3), value, np.float32))
    calib = shards(tmp_path / "a.npz")
    assert not holdout_overlap(calib, shards(tmp_path / "b.npz"))
    assert holdout_overlap(calib, shards(tmp_path / "a.npz")).pairs == ((str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "same file"),)
    assert [how for *_, how in holdout_overlap(calib, shards(tmp_path / "copy.npz", tmp_path / "b.npz")).pairs] == ["same content"]


def test_speed_verdict_gain_kept_slower_artifact_and_fp16_not_worth_it():
    good = speed_verdict(_profile(20.0, 12.0, 10.0))
    assert good["judged"] and not good["warning"] and good["batch"] == 16  # the largest batch is judged
    assert good["text"].startswith("keeps 80% of the FP16 gain: 1.67x FP32, all-FP16 2.00x (batch 16, NVIDIA H200)")
    # The OCR detector of issue 17: artifact 25.5 ms, FP32 21.5 ms, all-FP16 20.0 ms (7%).
    slow = speed_verdict(_profile(21.5, 25.5, 20.0))
    assert slow["judged"] and slow["warning"] and not slow["artifact_faster"] and slow["fp16_worth_it"]
    assert slow["text"].startswith("the artifact is not faster than FP32: 0.84x")
    flat = speed_verdict(_profile(21.5, 25.5, 21.0))
    assert flat["text"].startswith("FP16 is not worth it for this model on this runtime") and "the artifact at 0.84x" in flat["text"]
    assert headline(True, None, SHARE_HIGH, slow) == "VERIFIED — but " + slow["text"]
    assert "only 3%" in headline(True, None, SHARE_LOW, slow) and "not faster than FP32" in headline(True, None, SHARE_LOW, slow)
    # CPU timings never stand for FP16's speed; no profile says so.
    cpu = speed_verdict(_profile(20.0, 12.0, 10.0, gpu=False))
    assert not cpu["judged"] and "CPU timings" in cpu["text"]
    assert headline(True, None, SHARE_HIGH, cpu) == "VERIFIED: artifact matches FP32 within tolerance"
    assert not speed_verdict({"measured": False, "note": "not measured"})["judged"] and not speed_verdict(None)["judged"]


def test_release_gate_min_share_and_min_speedup():
    assert release_gate(SHARE_LOW, None).allowed  # off by default
    refused = release_gate(SHARE_LOW, None, min_fp16_share=0.5)
    assert refused.refused == "release refused: FP16 runs 3% of the estimated FLOPs, below min_fp16_share 50%"
    assert "\n" not in refused.refused and refused.to_dict()["allowed"] is False
    assert release_gate(None, None, min_fp16_share=0.5).refused.startswith("release refused: the FP16 share of FLOPs could not be estimated")
    assert release_gate(SHARE_HIGH, None, min_fp16_share=0.5).allowed
    slow = speed_verdict(_profile(21.5, 25.5, 20.0))
    gate = release_gate(SHARE_HIGH, slow, min_speedup=1.1)
    assert gate.refused == "release refused: the artifact runs at 0.84x FP32 (batch 16, NVIDIA H200), below min_speedup 1.1"
    cpu = release_gate(SHARE_HIGH, speed_verdict({"measured": False}), min_speedup=1.1)
    assert cpu.allowed and cpu.notes == ("min_speedup 1.1 not judged: no GPU profile, and FP16's speed is measured on a GPU worker only",)


def test_manifest_report_and_ui_carry_the_share_and_the_warning():
    verdict = headline(True, None, SHARE_LOW)
    gate = release_gate(SHARE_LOW, None, min_fp16_share=0.5).to_dict()
    manifest = Manifest.from_dict({"run_id": "r", "name": "m", "version": "1", "status": "verified",
                                   "verdict": verdict, "fp16_share": SHARE_LOW, "release_gate": gate})
    data = manifest.to_dict()
    assert data["fp16_share"] == SHARE_LOW and data["verdict"] == verdict and data["release_gate"] == gate
    assert "speed" not in data and Manifest.from_dict(data).to_dict() == data
    verification = {"passed": True, "reason": None, "outputs": {"y": {"kind": "float", "max_abs_error": 0.001, "max_rel_error": 0.004, "cosine": 0.99999, "nonfinite": 0}}}
    page = render_report(None, {"threshold": 1e4, "fp32_nodes": []}, verification, data)
    assert "only 3% of the arithmetic runs in FP16" in page and "of the estimated FLOPs in FP16" in page
    assert "below min_fp16_share 50%" in page
    result = {"run_id": "r", "headline": verdict, "fp16_share": SHARE_LOW, "nodes_total": 20}
    import pyarrow as pa

    stats = pa.table({"tensor": ["t"], "producer": ["n"], "op_type": ["MatMul"], "max_abs": [1.0]})
    md = summary_markdown("m", "1", result, {"threshold": 1e4, "fp32_nodes": []}, verification, stats)
    first = md.splitlines()[0]
    assert first.startswith("# m 1 — ⚠️ verified — but only 3% of the arithmetic runs in FP16"), first
    assert "- FP16 share: FP16 runs 3% of the estimated FLOPs (1 of 4 Conv/Gemm/MatMul nodes)" in md
    assert "- FP32 nodes: 0 of 20" in md


def _run(files: dict, store: Path, version: str, *extra: str) -> list[str]:
    return ["run", files["model"], "--calib", files["calib"], "--holdout", files["holdout"], "--name", "demo", "--model-version", version,
            "--store", str(store), "--json", *extra]


def _summary_block(out: str) -> list[str]:
    lines = [line for line in out.splitlines() if line.strip()]
    return [line for line in lines if not line.startswith("flow run:")]


def test_run_shows_the_share_warns_when_low_and_the_gate_refuses(prefect_api_url, demo_files, tmp_path, capsys):
    store = tmp_path / "store"
    # Default settings: the demo keeps most of its arithmetic in FP16; no warning, released.
    code = main(_run(demo_files, store, "1"))
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    share = summary["fp16_share"]
    assert share["share_flops"] >= LOW_FP16_SHARE and share["compute_nodes_total"] > 0 and share["summary"].startswith("FP16 runs ")
    lines = _summary_block(out)
    assert lines[0] == "VERIFIED: artifact matches FP32 within tolerance" == summary["headline"]
    assert f"fp32 nodes:           {summary['fp32_nodes']} of {summary['nodes_total']}" in out
    assert f"fp16 share:           {share['summary']}" in out
    assert summary["released"] and summary["release_gate"]["allowed"]

    # Every MatMul forced FP32: nearly the FP32 model. The first line says so, and the release
    # gate (min 50% of the FLOPs in FP16) refuses it; the run stays verified, unreleased.
    code = main(_run(demo_files, store, "2", "--force-fp32-ops", "MatMul", "--min-fp16-share", "0.5", "--min-speedup", "1.1"))
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    low = summary["fp16_share"]
    assert low["share_flops"] < LOW_FP16_SHARE and low["compute_nodes_fp16"] < low["compute_nodes_total"]
    first = _summary_block(out)[0]
    assert first.startswith("VERIFIED — but ") and ("this is nearly the FP32 model" in first or "the artifact is the FP32 model" in first), first
    assert summary["headline"] == first
    assert summary["passed"] and summary["status"] == "verified" and not summary["released"]
    assert summary["release_reason"].startswith("release refused: FP16 runs ") and "below min_fp16_share 50%" in summary["release_reason"]
    assert "min_speedup 1.1 not judged" in summary["release_reason"]  # CPU worker: no GPU profile
    manifest = json.loads((Path(summary["run_dir"]) / "manifest.json").read_text())
    assert manifest["fp16_share"] == low and manifest["verdict"] == first
    assert manifest["release_gate"]["refused"] in summary["release_reason"] and manifest["parameters"]["release"]["min_fp16_share"] == 0.5
    status = json.loads((Path(summary["run_dir"]) / "status.json").read_text())
    assert status["status"] == "verified" and status["reason"].startswith("release refused: ")
    assert not (store / "demo" / "2" / "releases").exists() or not any((store / "demo" / "2" / "releases").iterdir())
    assert "this is nearly the FP32 model" in (Path(summary["run_dir"]) / "report.html").read_text() or "the artifact is the FP32 model" in (Path(summary["run_dir"]) / "report.html").read_text()

    # History: status "verified" (as run says), the FP16 share column.
    assert main(["history", "demo", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert "fp16 flops" in header and "passed" not in out
    assert all("verified" in row for row in rows[:2]), out
    assert main(["history", "demo", "--store", str(store), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert sorted(r["fp16_share"] for r in runs) == sorted([share["share_flops"], low["share_flops"]])
    assert main(["show", "demo", "--model-version", "2", "--run", summary["run_id"], "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert f"verdict: {first}" in shown and "release gate: release refused: " in shown
