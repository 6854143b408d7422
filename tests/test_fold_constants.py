"""Scale folding on weights stored as ConstantOfShape fills, beyond FP16's exponent range, with
negligible biases and wide layers (issue 10: the ONNX project's light test CNNs)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from fold_models import Net, fold_check, io, measure, rel_error, run
from fp16guard.graph.fold_batchnorm import fold_batchnorm
from fp16guard.graph.fold_scales import NEGLIGIBLE_BIAS, TensorRange, apply_scales, faithful, solve_scales
from fp16guard.plan.strategies.fold import compute_fp32


def _images(n=6, c=4, side=6, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, c, side, side)).astype(np.float32)}


def _light_cnn(layers: int = 6, channels: int = 4, weight: float = 1.0, bias: float = 0.02):
    """An opset-9 CNN stored like the ONNX light models: every weight and bias a ConstantOfShape
    fill, no normalisation, so activations grow up to ``weight * 9 * channels`` per layer (36x
    here: about 1e9 after six layers, past what 2**14 could fold)."""
    net = Net(31)
    h = "x"
    for i in range(layers):
        w = net.fill(f"conv{i}.w", [channels, channels, 3, 3], weight)
        b = net.fill(f"conv{i}.b", [channels], bias)
        h = net.op("Relu", f"relu{i}", [net.op("Conv", f"conv{i}", [h, w, b], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    h = net.op("Flatten", "flat", [h], axis=1)
    w = net.fill("fc.w", [channels * 36, 5], 0.01)
    b = net.fill("fc.b", [5], bias)
    net.op("Gemm", "y", [h, w, b])
    return net.model([io("x", "N", channels, 6, 6)], [io("y", "N", 5)], opset=9)


def test_fill_weights_fold_and_stay_fills(tmp_path):
    """Weights made by ConstantOfShape carry the scales (as new fills, not as expanded arrays),
    exponents go past 2**14, the biases that sink below FP16 next to their huge outputs are
    dropped, and every Conv/Gemm runs in FP16 while the range rule pinned them all."""
    model = _light_cnn()
    stats = measure(tmp_path, model, _images(), mean=True)
    plan, folded, res = fold_check(tmp_path, model, _images(), _images(seed=1), strategy="auto", stats=stats)
    assert compute_fp32(res["pin_plan"]) >= 4
    assert plan["strategy"]["used"] == "fold" and compute_fp32(plan) == 0
    assert max(plan["folding"]["exponents"].values()) > 14
    producers = {o: n.op_type for n in folded.graph.node for o in n.output}
    readers = [n for n in folded.graph.node if n.op_type in ("Conv", "Gemm")]
    assert all(producers.get(n.input[1]) == "ConstantOfShape" for n in readers)  # still fills
    assert len(folded.graph.initializer) == len(model.graph.initializer) + len(plan["folding"]["restores"])  # shapes + restore factors only
    dropped = plan["folding"]["dropped_biases"]
    assert dropped and all(d["bias_max_abs"] <= NEGLIGIBLE_BIAS * d["output_mean_abs"] for d in dropped)
    assert res["exact"] < 1e-5  # dropping biases below 2**-11 of the output changes nothing visible
    assert res["mixed"] < 5e-3


def test_batchnorm_with_fill_parameters_folds_into_the_conv():
    net = Net(32)
    w = net.fill("conv.w", [3, 3, 3, 3], 0.1)
    c = net.op("Conv", "conv", ["x", w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    params = [net.fill(f"bn.{k}", [3], v) for k, v in (("s", 2.0), ("b", 0.5), ("m", 0.25), ("v", 4.0))]
    net.nodes.append(helper.make_node("BatchNormalization", [c] + params, ["y"], name="bn"))
    model = net.model([io("x", "N", 3, 5, 5)], [io("y", "N", 3, 5, 5)], opset=9)
    folded, folds = fold_batchnorm(model)
    assert folds == [{"conv": "conv", "batchnorm": "bn", "output": "y"}]
    assert [n.op_type for n in folded.graph.node].count("BatchNormalization") == 0
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    producers = {o: n.op_type for n in folded.graph.node for o in n.output}
    assert producers[conv.input[1]] == "ConstantOfShape"  # uniform weight x uniform factor: still a fill
    assert not any(n.op_type == "ConstantOfShape" and n.output[0].startswith("bn.") for n in folded.graph.node)  # unread fills gone
    feeds = _images(2, c=3, side=5)
    assert rel_error(run(model, feeds)[0], run(folded, feeds)[0]) < 1e-6


def _gemm_chain(bias: float):
    net = Net(33)
    h = net.gemm("fc1", "x", 8, 8, gain=1.0)
    net.op("Gemm", "fc2", [h, net.const("w2", np.full((8, 4), 1000.0)), net.const("b2", np.full(4, bias))])
    net.nodes.append(helper.make_node("Softmax", ["fc2"], ["y"], name="out"))
    return net.model([io("x", "N", 8)], [io("y", "N", 4)])


def test_a_negligible_bias_is_dropped_and_a_significant_one_is_not():
    """fc2's output needs 2**20: its bias divided by 2**20 is below FP16. With an output whose mean
    |x| is 1e9 the bias (1e-3) is below FP16's resolution of it and is dropped (set to 0); with a
    mean |x| of 1 (a few huge outliers), it is kept and the output keeps a smaller scale."""
    model = _gemm_chain(bias=1e-3)
    base = {"x": TensorRange(2.0), "fc1": TensorRange(5.0)}
    big = solve_scales(model, {**base, "fc2": TensorRange(1e10, mean_abs=1e9)}, 1e4)
    assert big.exponents["fc2"] >= 20 and [d["node"] for d in big.dropped_biases] == ["fc2"]
    folded, _ = apply_scales(model, big.exponents, ["fc2"])
    bias = next(n for n in folded.graph.node if n.name == "fc2").input[2]
    assert not np.any([np.frombuffer(t.raw_data, np.float32) for t in folded.graph.initializer if t.name == bias][0])
    small = solve_scales(model, {**base, "fc2": TensorRange(1e10, mean_abs=1.0)}, 1e4)
    assert small.dropped_biases == [] and small.exponents.get("fc2", 0) < 20
    unknown = solve_scales(model, {**base, "fc2": TensorRange(1e10)}, 1e4)  # no mean |x|: never dropped
    assert unknown.dropped_biases == []


def test_a_wide_layer_splits_its_step_with_the_layer_before():
    """fc2 (weights 1e-3) needs its output at 2**17 while its input needs only 2**4: a step of
    2**-13 would push its weights below FP16's normal range, so fc1's output is scaled more
    (within its underflow guard) and fc2's weights take a step they can hold."""
    net = Net(34)
    h = net.gemm("fc1", "x", 8, 8, gain=1000.0, bias=0.0)  # weights large enough to take 2**-16
    net.op("MatMul", "fc2", [h, net.const("w2", np.full((8, 4), 1e-3))])
    net.nodes.append(helper.make_node("Softmax", ["fc2"], ["y"], name="out"))
    model = net.model([io("x", "N", 8)], [io("y", "N", 4)])
    ranges = {"x": TensorRange(2.0), "fc1": TensorRange(1e5), "fc2": TensorRange(1e9)}
    solution = solve_scales(model, ranges, 1e4)
    e1, e2 = solution.exponents["fc1"], solution.exponents["fc2"]
    assert e2 == 17 and 4 < e1 <= 16
    assert faithful(np.float32([1e-3]), np.float32([1e-3 * 2.0 ** (e1 - e2)]))
    assert any("raised" in r["why"] for r in solution.regions)
    folded, _ = apply_scales(model, solution.exponents)
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
    assert rel_error(run(model, feeds)[0], run(folded, feeds)[0]) < 1e-6


def _residual_stream():
    """x -> fc0 -> relu0 = s0; s1 = relu(s0 + fc1(s0)); s2 = relu(s1 + fc2(s1)) -> y: a residual
    stream whose blocks grow 100x each (biases 0, weights He x 10)."""
    net = Net(35)
    s = net.op("Relu", "s0", [net.gemm("fc0", "x", 8, 8, gain=10.0, bias=0.0)])
    for i in (1, 2):
        branch = net.gemm(f"fc{i}", s, 8, 8, gain=10.0, bias=0.0)
        s = net.op("Relu", f"s{i}", [net.op("Add", f"add{i}", [s, branch])])
    net.nodes.append(helper.make_node("Identity", [s], ["y"], name="out"))
    return net.model([io("x", "N", 8)], [io("y", "N", 8)])


def test_a_residual_stream_steps_its_scale_block_by_block():
    """One exponent for the whole stream would need 2**15 (its largest values) while its first
    block's smallest values allow at most 2**14: refused as one class. The joins share the scale
    of their branch (a Gemm) and read the stream through a converter where the stream's own
    class cannot follow, so every block folds."""
    model = _residual_stream()
    r = TensorRange
    ranges = {
        "x": r(2.0, smallest=0.5),
        "fc0": r(2e4, smallest=1.0), "s0": r(2e4, smallest=1.0),
        "fc1": r(2e6, smallest=100.0), "add1": r(2e6, smallest=100.0), "s1": r(2e6, smallest=100.0),
        "fc2": r(2e8, smallest=1e4), "add2": r(2e8, smallest=1e4), "s2": r(2e8, smallest=1e4), "y": r(2e8, smallest=1e4),
    }
    solution = solve_scales(model, ranges, 1e4)
    e = solution.exponents
    assert e["s0"] == e["fc1"] == e["add1"] == e["s1"]  # block 1 shares the stream's scale: no converter
    assert e["fc2"] == e["add2"] == e["s2"] == 15 and e["s1"] < 15  # block 2 steps up
    folded, new = apply_scales(model, e)
    converters = [n for n in folded.graph.node if n.op_type == "Mul" and n.input[0] == "s1"]
    assert len(converters) == 1 and new[converters[0].output[0]] == ("s1", 15)
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
    assert rel_error(run(model, feeds)[0], run(folded, feeds)[0]) < 1e-6


def test_a_large_scale_down_is_made_of_normal_fp16_steps():
    """A converter from 2**2 to 2**20 multiplies by 2**-18, a subnormal FP16 constant: it is made
    of two Muls (2**-14, then 2**-4), every factor a normal FP16 number, exact together."""
    model = _residual_stream()
    exponents = {"fc0": 2, "s0": 2, "fc1": 20, "add1": 20, "s1": 20, "fc2": 20, "add2": 20, "s2": 20}
    folded, new = apply_scales(model, exponents)
    inits = {t.name: float(np.frombuffer(t.raw_data, np.float32)[0]) for t in folded.graph.initializer if t.name.endswith("__factor")}
    steps = [n for n in folded.graph.node if n.op_type == "Mul" and n.input[1] in inits]
    factors = sorted(inits[n.input[1]] for n in steps if inits[n.input[1]] < 1)  # scale-downs (the restore before y is 2**20)
    assert factors == [2.0**-14, 2.0**-4]
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
    assert rel_error(run(model, feeds)[0], run(folded, feeds)[0]) < 1e-6


def test_underflow_guard_reads_the_mean_when_the_statistics_have_it():
    """One element at 1e-9 does not block a scale when the tensor's mean |x| (1e3) stays far above
    FP16's normal range once scaled; without a mean the smallest element decides and refuses; a
    tensor whose mean would sink below 2**-4 refuses either way."""
    net = Net(36)
    net.gemm("fc", "x", 8, 8, gain=1000.0, bias=0.0)
    net.nodes.append(helper.make_node("Relu", ["fc"], ["y"], name="relu"))
    model = net.model([io("x", "N", 8)], [io("y", "N", 8)])

    def exponent(fc: TensorRange) -> int:
        return solve_scales(model, {"x": TensorRange(2.0), "fc": fc, "y": fc}, 1e4).exponents.get("fc", 0)

    assert exponent(TensorRange(8e4, smallest=1e-9, mean_abs=1e3)) == 3
    assert exponent(TensorRange(8e4, smallest=1e-9)) == 0
    assert exponent(TensorRange(8e4, smallest=1.0, mean_abs=0.1)) == 0


def test_a_skip_operand_without_statistics_refuses_its_join_with_a_reason():
    """The join reads its skip operand at its own scale, so a skip without statistics makes the
    join's class unknown: refused, and the reason names the skip."""
    model = _residual_stream()
    r = TensorRange
    ranges = {"x": r(2.0), "fc0": r(2e4), "s0": r(float("nan")), "fc1": r(2e6), "add1": r(2e6), "s1": r(2e6), "fc2": r(2e6), "add2": r(2e6), "s2": r(2e6), "y": r(2e6)}
    solution = solve_scales(model, ranges, 1e4)
    refused = [x for x in solution.regions if x["status"] == "refused"]
    assert any("'s0'" in x["why"] and "no finite statistics" in x["why"] for x in refused)
