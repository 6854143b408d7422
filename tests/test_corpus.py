"""The model corpus: every construct real exporters write either converts and verifies, or is
refused in one line that names it (never a traceback).

Each model of :mod:`corpus_models` goes through the library path the flow takes, without
Prefect: saved to disk (weights embedded or in a data file beside it) → ``load_model`` →
statistics per calibration shard (``shard_stats``, the instrumented model on onnxruntime) →
``plan_model`` (the default strategy over ``make_plan``) → ``to_mixed_precision`` of the model
the plan is for (its full ONNX check on) → ``verify`` against the FP32 model file on a holdout
shard through FP16 storage emulation. The plan of the rules alone (``make_plan``, which puts more
of a tiny model in FP16) is converted and verified too, and the model is converted with no node
kept FP32 (the reported crash reproduced that way) and run once on onnxruntime as built.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from corpus_models import CORPUS, CorpusModel
from fp16guard.errors import UserError

CASES = [build() for build in CORPUS]


def _shards(folder: Path, role: str, feeds: list[dict]):
    from fp16guard.io.shards import discover_shards

    folder.mkdir()
    for i, arrays in enumerate(feeds):
        np.savez(folder / f"{i:03d}.npz", **arrays)
    return discover_shards([folder], role)


def _save(case: CorpusModel, folder: Path) -> Path:
    path = folder / f"{case.name}.onnx"
    if case.external_data:
        onnx.save(case.model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{path.name}.data", size_threshold=0)
        assert (folder / f"{path.name}.data").is_file()
    else:
        onnx.save(case.model, str(path))
    return path


def run_pipeline(case: CorpusModel, tmp_path: Path) -> dict:
    """load → statistics → plan → convert → verify, as the flow's tasks call the library.

    Returns:
        ``{"plan", "report", "all_fp16"}``: the plan, the verification report and the
        converted all-FP16 model.

    Raises:
        UserError: the model is refused (the test checks the message).
    """
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import load_model
    from fp16guard.plan.planner import make_plan
    from fp16guard.plan.strategies import model_for_plan, plan_model
    from fp16guard.settings import PlanSettings, VerifySettings
    from fp16guard.stats.collect import reduce_stats, shard_stats
    from fp16guard.verify.compare import verify

    path = _save(case, tmp_path)
    calib = _shards(tmp_path / "calib", "calibration", [case.make_feeds(0), case.make_feeds(1)])
    holdout = _shards(tmp_path / "holdout", "holdout", [case.make_feeds(2)])
    model = load_model(path)
    stats = reduce_stats([shard_stats(path, ref) for ref in calib])
    # The default strategy (make_plan's rules, scale folding where it keeps fewer nodes FP32), and
    # the model the plan is for, replayed from the file as the build task does.
    plan, _ = plan_model(model, stats, PlanSettings(), weights_dir=path.parent)
    fp32 = {e["name"] for e in plan["fp32_nodes"]}
    mixed = to_mixed_precision(model_for_plan(load_model(path), plan), fp32 | case.fp32_nodes)
    report = verify(path, mixed, holdout, VerifySettings(), emulate=True)
    # On tiny models the default strategy keeps cheap islands FP32 (no compute worth a cast), which
    # would leave most constructs unconverted: the rules alone put every node they allow in FP16.
    rules_fp32 = make_plan(model, stats, PlanSettings(), weights_dir=path.parent).fp32_names
    rules_report = verify(path, to_mixed_precision(model, rules_fp32 | case.fp32_nodes), holdout, VerifySettings(), emulate=True)
    all_fp16 = to_mixed_precision(model, set())
    return {"plan": plan, "fp32": fp32, "report": report, "rules_fp32": rules_fp32, "rules_report": rules_report, "all_fp16": all_fp16, "stats": stats}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_model_converts_and_verifies_or_is_refused_in_one_line(case: CorpusModel, tmp_path):
    try:
        out = run_pipeline(case, tmp_path)
    except UserError as exc:
        message = str(exc)
        assert case.refused is not None, f"{case.name} was refused but should convert: {message}"
        assert "\n" not in message and message, f"refusal is not one line: {message!r}"
        assert re.search(case.refused, message), f"refusal does not name the construct ({case.refused}): {message}"
        return
    assert case.refused is None, f"{case.name} should be refused ({case.refused}) but converted"
    for key in ("report", "rules_report"):
        assert out[key]["passed"], f"{case.name} ({key}): {out[key]['reason']}"
    # Every float tensor of the main graph was measured (the statistics saw the whole model).
    assert out["stats"].num_rows > 0
    # The all-FP16 conversion runs as built on onnxruntime and keeps the graph outputs' types.
    session = ort.InferenceSession(out["all_fp16"].SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, case.make_feeds(3))
    declared = [o.type.tensor_type.elem_type for o in case.model.graph.output]
    assert [onnx.helper.np_dtype_to_tensor_dtype(np.asarray(g).dtype) for g in got] == declared


def test_typed_weights_keep_value_info_consistent():
    """The reported crash: typed weights converted to FP16 are declared FLOAT16, with no node kept FP32."""
    from corpus_models import typed_weights_in_value_info
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import normalize_model

    model = normalize_model(typed_weights_in_value_info().model)
    mixed = to_mixed_precision(model, set())
    declared = {v.name: v.type.tensor_type.elem_type for v in mixed.graph.value_info}
    stored = {t.name: t.data_type for t in mixed.graph.initializer}
    assert stored["w1"] == stored["w2"] == stored["b1"] == onnx.TensorProto.FLOAT16
    assert all(declared[n] == stored[n] for n in stored if n in declared)


def test_function_op_outputs_are_typed_from_the_schema():
    """ONNX runs no inference for GroupNormalization-21 (a function op): its output, and every
    tensor after it, gets its type from the op schemas, so the rules do not keep them FP32 as
    ``unknown_type``."""
    from corpus_models import opset_21_new_ops
    from fp16guard.graph.info import fp16_slots, opset_map, tensor_types

    model = opset_21_new_ops().model
    types = tensor_types(model)
    assert types.elem["gn"] == types.elem["gelu"] == types.elem["y"] == onnx.TensorProto.FLOAT
    assert [fp16_slots(n, opset_map(model), types).status for n in model.graph.node] == ["fp16"] * 3
