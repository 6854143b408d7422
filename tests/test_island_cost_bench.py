"""benchmarks/island_cost.py runs end to end on the CPU at its --small size (the GPU run is the lead's).

The timings of a CPU smoke run mean nothing (the CPU provider computes FP16 ops in FP32 behind
casts); what is checked is that every case is built, decided, timed and profiled, and that the
decision the benchmark reports is the cost model's rule on the borders and slots it counted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import island_cost  # noqa: E402


def test_island_cost_smoke_on_cpu(tmp_path, capsys):
    out, js = tmp_path / "t.txt", tmp_path / "t.json"
    argv = ["--small", "--k-max", "3", "--providers", "CPUExecutionProvider", "--repeats", "4", "--rounds", "2", "--profile-runs", "2", "--out", str(out), "--json", str(js)]
    assert island_cost.main(argv) == 0
    data = json.loads(js.read_text())
    rows = {r["case"]: r for r in data["rows"]}
    assert set(rows) == {"chain-1", "chain-2", "chain-3", "relu", "residual-1", "residual-2", "residual-4", "pinned-softmax", "pinned-sigmoid"}
    for r in rows.values():
        assert all(ms > 0 for ms in r["ms"].values())
        if r["kind"] == "pinned":
            assert r["predicted"] == "op-fp32"
            continue
        # One tensor enters a chain run and one leaves; the residual Add reads two.
        assert r["borders"] == (3 if r["kind"] == "residual" else 2)
        assert r["slots"] == 2 * r["k"] + (1 if r["kind"] == "residual" else 0)
        expected = "fp32-run" if 6 * r["borders"] >= 2 * r["slots"] else "fp16-run"
        assert r["predicted"] == expected, r["case"]
        assert r["agree"] == (r["winner"] == r["predicted"])
        assert set(r["profile"]) == {"fp16-run", "fp32-run"} and r["profile"]["fp16-run"]["nodes"] > 0
    # chain-3 is the model's break-even (12 >= 12): it moves; residual-4 (18 >= 18) too.
    assert rows["chain-3"]["predicted"] == "fp32-run" and rows["residual-4"]["predicted"] == "fp32-run"
    printed = capsys.readouterr().out
    assert "fp16-run ms" in printed and "Cast/FP32op" in printed and "break-even" in printed
    assert out.read_text().splitlines()[0] == printed.splitlines()[0]


def test_island_cost_refuses_unknown_provider(capsys):
    assert island_cost.main(["--small", "--providers", "NoSuchExecutionProvider"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NoSuchExecutionProvider" in err[0]


@pytest.mark.parametrize("ops", [["Sigmoid", "Add", "Mul"]])
def test_graph_shapes_keep_the_element_count(ops):
    model, convs, run = island_cost.build_graph("g", ops, (1, 4, 8, 8))
    assert convs == ["conv_in", "conv_out"] and len(run) == len(ops)
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    assert all(dims[n] == [1, 4, 8, 8] for n in run)
