"""Tiny ONNX models that really overflow FP16 on their data, built in code (no downloads).

Each example is an FP32 model whose activations or constants leave the FP16 range (|x| > 65504)
on data drawn from the example's own input distribution, covering the cases in docs/FACTS.md #3-5:

- ``mlp``: stacked Gemm/MatMul + Relu layers with no normalisation; hidden activations grow
  layer by layer to ~1e5.
- ``attention``: self-attention whose logits ``Q @ K^T`` reach ~1e5 while the Softmax output
  and the attention result stay small.
- ``rmsnorm``: a T5-style RMSNorm (``Pow(h, 2) -> ReduceMean -> Sqrt -> Div``) over a residual
  stream with |h| ~ 1e3: ``Pow`` overflows, and in FP16 the output becomes ``h / inf = 0``,
  finite and wrong (docs/FACTS.md #4).
- ``large_constant``: an input normalisation whose offset constant (101325, a pressure in Pa)
  cannot be stored in FP16 at all (docs/FACTS.md #5).
- ``demo``: a small sensor transformer combining the above (a few hundred KB); its all-FP16
  build gives NaN.

Every model has a dynamic batch dimension (``batch``), opset 17, named nodes, and is seeded, so
the same call gives the same bytes. :func:`write_shards` writes calibration or holdout data as
``.npz`` shards (arrays keyed by input name, leading batch dimension).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fp16guard.io import atomic

#: Opset of every example (ReduceMean still takes ``axes`` as an attribute here).
OPSET = 17
#: IR version of every example: readable by onnxruntime >= 1.15.
IR_VERSION = 8


class _Builder:
    """Collects nodes and initializers for one graph; every node gets an explicit name."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def const_i64(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], std: float) -> str:
        return self.const(name, self.rng.normal(0.0, std, size=shape))

    def op(self, op_type: str, name: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **attrs) -> str | list[str]:
        outs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fp16guard.examples")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model


def _float_input(name: str, *dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])


def _rms_norm(b: _Builder, prefix: str, h: str, dim: int) -> str:
    """T5-style RMSNorm: h / sqrt(mean(h^2) + eps) * gamma (no mean subtraction)."""
    sq = b.op("Pow", f"{prefix}/Pow", [h, b.const(f"{prefix}/two", 2.0)])
    mean = b.op("ReduceMean", f"{prefix}/ReduceMean", [sq], axes=[-1], keepdims=1)
    var = b.op("Add", f"{prefix}/AddEps", [mean, b.const(f"{prefix}/eps", 1e-6)])
    rms = b.op("Sqrt", f"{prefix}/Sqrt", [var])
    normed = b.op("Div", f"{prefix}/Div", [h, rms])
    gamma = b.const(f"{prefix}/gamma", 1.0 + 0.1 * b.rng.standard_normal(dim))
    return b.op("Mul", f"{prefix}/Mul", [normed, gamma])


def _self_attention(b: _Builder, prefix: str, h: str, dim: int, logit_scale: float) -> str:
    """Single-head self-attention whose logits are ~``logit_scale`` * ||h||^2 / dim.

    The key projection is the query projection plus a little noise, so Q K^T is close to a
    Gram matrix: each token attends mostly to itself (large, well-separated logits), as in
    "sharp" attention heads. No 1/sqrt(d) scaling, like models that fold it into the weights.
    """
    base = b.rng.normal(0.0, 1.0 / np.sqrt(dim), size=(dim, dim))
    wq = b.const(f"{prefix}/q_proj/weight", base * np.sqrt(logit_scale))
    wk = b.const(f"{prefix}/k_proj/weight", (base + b.rng.normal(0.0, 0.1 / np.sqrt(dim), size=(dim, dim))) * np.sqrt(logit_scale))
    q = b.op("MatMul", f"{prefix}/q_proj", [h, wq])
    k = b.op("MatMul", f"{prefix}/k_proj", [h, wk])
    v = b.op("MatMul", f"{prefix}/v_proj", [h, b.weight(f"{prefix}/v_proj/weight", (dim, dim), 1.0 / np.sqrt(dim))])
    kt = b.op("Transpose", f"{prefix}/k_transpose", [k], perm=[0, 2, 1])
    logits = b.op("MatMul", f"{prefix}/scores", [q, kt])
    probs = b.op("Softmax", f"{prefix}/Softmax", [logits], axis=-1)
    ctx = b.op("MatMul", f"{prefix}/context", [probs, v])
    return b.op("MatMul", f"{prefix}/o_proj", [ctx, b.weight(f"{prefix}/o_proj/weight", (dim, dim), 1.0 / np.sqrt(dim))])


# --------------------------------------------------------------------------------------------
# (a) stacked layers without normalisation


def mlp_model(seed: int = 0) -> onnx.ModelProto:
    """Four Gemm/MatMul + Relu layers, no normalisation: each layer multiplies the activation
    scale by ~8, so the last hidden layer peaks around 1e5 on inputs with std ~5.

    Input ``x`` [batch, 64]; output ``y`` [batch, 10] (the head scales back down to O(10)).
    """
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    h = "x"
    widths = [64, 128, 128, 128, 128]
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        w = b.weight(f"layer{i}/weight", (fan_in, fan_out), 11.0 / np.sqrt(fan_in))
        if i == 0:
            h = b.op("Gemm", f"layer{i}/Gemm", [h, w, b.const(f"layer{i}/bias", rng.normal(0, 1, fan_out))])
        else:
            h = b.op("Add", f"layer{i}/Add", [b.op("MatMul", f"layer{i}/MatMul", [h, w]), b.const(f"layer{i}/bias", rng.normal(0, 1, fan_out))])
        h = b.op("Relu", f"layer{i}/Relu", [h])
    w = b.weight("head/weight", (128, 10), 1e-4 / np.sqrt(128))
    b.op("Gemm", "head/Gemm", [h, w, b.const("head/bias", np.zeros(10))], outputs=["y"])
    return b.model("mlp", [_float_input("x", 64)], [_float_input("y", 10)])


def _mlp_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"x": rng.normal(0.0, 5.0, size=(n, 64)).astype(np.float32)}


# --------------------------------------------------------------------------------------------
# (b) attention with large logits


def attention_model(seed: int = 0) -> onnx.ModelProto:
    """Self-attention over 16 tokens of width 32 whose logits reach ~1e5; Softmax output and the
    attention result are small. Input ``x`` [batch, 16, 32]; output ``y`` [batch, 16, 32]."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    out = _self_attention(b, "attn", "x", 32, logit_scale=2000.0)
    b.op("Add", "residual/Add", ["x", out], outputs=["y"])
    return b.model("attention", [_float_input("x", 16, 32)], [_float_input("y", 16, 32)])


def _attention_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"x": rng.normal(0.0, 1.0, size=(n, 16, 32)).astype(np.float32)}


# --------------------------------------------------------------------------------------------
# (c) T5-style RMSNorm on a large residual stream


def rmsnorm_model(seed: int = 0) -> onnx.ModelProto:
    """Projection to a residual stream with |h| ~ 1e3, T5-style RMSNorm, output projection.

    ``Pow(h, 2)`` reaches ~1e6 and overflows FP16; ``ReduceMean`` and ``Sqrt`` read it. In FP16
    the norm's output is h / inf = 0: finite and wrong. Input ``x`` [batch, 8, 64]; output
    ``y`` [batch, 8, 16].
    """
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    h = b.op("MatMul", "proj/MatMul", ["x", b.weight("proj/weight", (64, 64), 300.0 / np.sqrt(64))])
    n = _rms_norm(b, "norm", h, 64)
    b.op("MatMul", "out/MatMul", [n, b.weight("out/weight", (64, 16), 1.0 / np.sqrt(64))], outputs=["y"])
    return b.model("rmsnorm", [_float_input("x", 8, 64)], [_float_input("y", 8, 16)])


def _rmsnorm_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"x": rng.normal(0.0, 1.0, size=(n, 8, 64)).astype(np.float32)}


# --------------------------------------------------------------------------------------------
# (d) a constant above the FP16 range

#: Standard atmospheric pressure in Pa: the offset the large_constant model subtracts.
PRESSURE_OFFSET_PA = 101325.0


def large_constant_model(seed: int = 0) -> onnx.ModelProto:
    """Raw pressure readings (Pa, ~1e5) normalised in-graph by ``(p - 101325) / 1000`` then a
    small Gemm/Relu network. The offset cannot be stored in FP16 (it becomes inf), nor can the
    readings. Input ``pressure`` [batch, 12]; output ``y`` [batch, 4]."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    centred = b.op("Sub", "normalize/Sub", ["pressure", b.const("normalize/offset", np.full(12, PRESSURE_OFFSET_PA))])
    scale = b.op("Constant", "normalize/scale", [], outputs=["normalize/scale_value"], value=numpy_helper.from_array(np.array(1000.0, dtype=np.float32)))
    z = b.op("Div", "normalize/Div", [centred, scale])
    h = b.op("Gemm", "fc1/Gemm", [z, b.weight("fc1/weight", (12, 32), 1.0 / np.sqrt(12)), b.const("fc1/bias", np.zeros(32))])
    h = b.op("Relu", "fc1/Relu", [h])
    b.op("Gemm", "fc2/Gemm", [h, b.weight("fc2/weight", (32, 4), 1.0 / np.sqrt(32)), b.const("fc2/bias", np.zeros(4))], outputs=["y"])
    return b.model("large_constant", [_float_input("pressure", 12)], [_float_input("y", 4)])


def _large_constant_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"pressure": (PRESSURE_OFFSET_PA + rng.normal(0.0, 2000.0, size=(n, 12))).astype(np.float32)}


# --------------------------------------------------------------------------------------------
# (e) the demo model


def demo_model(seed: int = 0) -> onnx.ModelProto:
    """A small sensor transformer (~200 KB) whose all-FP16 build gives NaN.

    ``pressure`` [batch, 16, 8] (raw Pa) -> in-graph normalisation with a 101325 offset ->
    embedding to width 64 with a large residual stream (|h| ~ 1e3) -> self-attention with logits
    ~1e5 -> residual -> T5-style RMSNorm -> Relu feed-forward (64 -> 256 -> 64) -> residual ->
    mean over time -> classifier ``logits`` [batch, 10]. Most nodes stay well inside the FP16
    range, so a mixed-precision build keeps most of the model in FP16.
    """
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    d, t, f, hidden = 64, 16, 8, 256
    centred = b.op("Sub", "input/Sub", ["pressure", b.const("input/offset", np.full(f, PRESSURE_OFFSET_PA))])
    z = b.op("Mul", "input/Mul", [centred, b.const("input/inv_scale", 1e-3)])
    e = b.op("Add", "embed/Add", [b.op("MatMul", "embed/MatMul", [z, b.weight("embed/weight", (f, d), 150.0 / np.sqrt(f))]), b.const("embed/bias", rng.normal(0, 10.0, d))])
    attn = _self_attention(b, "block0/attn", e, d, logit_scale=0.01)
    h1 = b.op("Add", "block0/attn_residual", [e, attn])
    n1 = _rms_norm(b, "block0/ffn_norm", h1, d)
    up = b.op("Add", "block0/ffn/up_add", [b.op("MatMul", "block0/ffn/up", [n1, b.weight("block0/ffn/up/weight", (d, hidden), 1.0 / np.sqrt(d))]), b.const("block0/ffn/up/bias", np.zeros(hidden))])
    act = b.op("Relu", "block0/ffn/Relu", [up])
    down = b.op("MatMul", "block0/ffn/down", [act, b.weight("block0/ffn/down/weight", (hidden, d), 30.0 / np.sqrt(hidden))])
    h2 = b.op("Add", "block0/ffn_residual", [h1, down])
    pooled = b.op("ReduceMean", "pool/ReduceMean", [h2], axes=[1], keepdims=0)
    n2 = b.op("Mul", "head/scale", [pooled, b.const("head/inv_scale", 1e-2)])
    b.op("Gemm", "head/Gemm", [n2, b.weight("head/weight", (d, 10), 1.0 / np.sqrt(d)), b.const("head/bias", np.zeros(10))], outputs=["logits"])
    return b.model("demo", [_float_input("pressure", t, f)], [_float_input("logits", 10)])


def _demo_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"pressure": (PRESSURE_OFFSET_PA + rng.normal(0.0, 1500.0, size=(n, 16, 8))).astype(np.float32)}


# --------------------------------------------------------------------------------------------
# registry and data


@dataclass(frozen=True)
class Example:
    """One example: how to build its model and draw its inputs."""

    name: str
    build: Callable[..., onnx.ModelProto]
    sample: Callable[[np.random.Generator, int], dict[str, np.ndarray]]
    description: str


EXAMPLES: dict[str, Example] = {
    "mlp": Example("mlp", mlp_model, _mlp_inputs, "stacked Gemm/MatMul+Relu, no normalisation, hidden ~1e5"),
    "attention": Example("attention", attention_model, _attention_inputs, "self-attention with logits ~1e5, small output"),
    "rmsnorm": Example("rmsnorm", rmsnorm_model, _rmsnorm_inputs, "T5-style RMSNorm, Pow(h,2) overflows, FP16 output h/inf=0"),
    "large_constant": Example("large_constant", large_constant_model, _large_constant_inputs, "offset constant 101325 above the FP16 range"),
    "demo": Example("demo", demo_model, _demo_inputs, "sensor transformer combining the above (all-FP16 gives NaN)"),
}


def get_example(name: str) -> Example:
    """The example called ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        return EXAMPLES[name]
    except KeyError:
        raise KeyError(f"unknown example {name!r}; expected one of {sorted(EXAMPLES)}") from None


def build_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Build the example model ``name`` (deterministic for a given seed)."""
    return get_example(name).build(seed)


def sample_inputs(name: str, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` samples of the example's inputs, keyed by input name, leading batch dimension."""
    return get_example(name).sample(np.random.default_rng(seed), n)


def save_model(name: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Build the example ``name`` and write it to ``path`` atomically. Returns the path."""
    model = build_model(name, seed)
    return atomic.write_bytes(path, model.SerializeToString())


def write_shards(
    model_name: str,
    folder: str | os.PathLike,
    n_shards: int,
    samples_per_shard: int | Sequence[int],
    seed: int,
    prefix: str = "shard",
) -> list[Path]:
    """Write ``n_shards`` ``.npz`` shards of example inputs into ``folder``.

    Args:
        model_name: example name (see :data:`EXAMPLES`).
        folder: created if missing; files are ``<prefix>-0000.npz`` and so on (sorted order is
            shard order).
        n_shards: number of files.
        samples_per_shard: samples per file; one int for all, or one int per shard (shards of
            different batch sizes).
        seed: the data seed; use different seeds for calibration and holdout.
        prefix: file name prefix.

    Returns:
        The written paths, in order. Side effect: writes the files (atomically).
    """
    example = get_example(model_name)
    sizes = [samples_per_shard] * n_shards if isinstance(samples_per_shard, int) else list(samples_per_shard)
    if len(sizes) != n_shards or any(s < 1 for s in sizes):
        raise ValueError(f"samples_per_shard {samples_per_shard!r} does not give {n_shards} positive sizes")
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    paths = []
    for i, size in enumerate(sizes):
        arrays = example.sample(rng, size)
        path = folder / f"{prefix}-{i:04d}.npz"
        with atomic.atomic_path(path) as tmp:
            # np.savez appends .npz to names without it; write through a file object instead.
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        paths.append(path)
    return paths
