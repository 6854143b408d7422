"""benchmarks/fold_latency.py runs end to end on the CPU at a tiny size (the GPU run is the lead's)."""

from __future__ import annotations

import json

from fold_models import _benchmark


def test_fold_latency_benchmark_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "fold.json"
    argv = ["--device", "cpu", "--resolution", "32", "--width-div", "16", "--batch", "2", "--calib", "2", "--holdout", "2", "--warmup", "0", "--repeats", "1", "--json", str(out)]
    assert _benchmark().main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"fp32", "fp16", "range", "fold"}
    assert rows["fold"]["fp32_compute_nodes"] == 0 < rows["range"]["fp32_compute_nodes"]
    assert rows["fold"]["nonfinite"] == 0 and rows["fold"]["max_rel_error"] < 0.02
    assert "median ms" in capsys.readouterr().out
