"""Ground truth for FP16 on a GPU: run an ONNX model in PyTorch with its declared dtypes.

onnxruntime's CPU provider hides FP16 overflow (NOTES #1) and the lent GPU machine has no
onnxruntime-gpu (NOTES #8), so this small interpreter executes an ONNX graph node by node with
PyTorch. Every tensor keeps the element type the graph gives it: FP16 initializers stay FP16,
``Cast`` changes types, and each op runs on the dtypes of its inputs, so on CUDA an FP16 node runs
real FP16 kernels (cuBLAS half GEMMs round their outputs to FP16 and overflow to inf) and an FP32
island runs in FP32. That is what a mixed-precision model does on an FP16 runtime, and what FP16
storage emulation (``fp16guard.emulate``) claims to reproduce on the CPU.

Scope: the main graph of models built from the ops in :data:`SUPPORTED_OPS` (the examples and
typical CNN/MLP/transformer graphs). Anything else raises :class:`UnsupportedOpError` naming the
node, before any computation. ``torch`` is imported lazily: it is not a dependency of
fp16guard; this module is for checks on machines that have it.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class UnsupportedOpError(Exception):
    """The model holds an op (or an attribute value) this interpreter does not implement."""


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError("fp16guard.torch_fp16 needs PyTorch (pip install torch); it is not an fp16guard dependency") from exc
    return torch


def torch_dtype(onnx_type: int):
    """The torch dtype of an ONNX element type (``TensorProto.FLOAT16`` -> ``torch.float16``)."""
    torch = _torch()
    table = {
        TensorProto.FLOAT: torch.float32,
        TensorProto.FLOAT16: torch.float16,
        TensorProto.BFLOAT16: torch.bfloat16,
        TensorProto.DOUBLE: torch.float64,
        TensorProto.INT64: torch.int64,
        TensorProto.INT32: torch.int32,
        TensorProto.INT16: torch.int16,
        TensorProto.INT8: torch.int8,
        TensorProto.UINT8: torch.uint8,
        TensorProto.BOOL: torch.bool,
    }
    if onnx_type not in table:
        raise UnsupportedOpError(f"element type {TensorProto.DataType.Name(onnx_type)} is not supported")
    return table[onnx_type]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --------------------------------------------------------------------------------------------
# op implementations: fn(ctx, inputs, attrs) -> tensor or tuple of tensors
# ``inputs`` holds None for omitted optional inputs.


def _binary(fn_name: str):
    def run(ctx, x, a):
        return getattr(ctx.torch, fn_name)(x[0], x[1])

    return run


def _unary(fn_name: str):
    def run(ctx, x, a):
        return getattr(ctx.torch, fn_name)(x[0])

    return run


def _pow(ctx, x, a):
    base, exp = x
    # ONNX: the result has the base's type; the exponent may have another type.
    if exp.dtype != base.dtype and base.is_floating_point():
        exp = exp.to(base.dtype)
    return ctx.torch.pow(base, exp).to(base.dtype)


def _gemm(ctx, x, a):
    A, B = x[0], x[1]
    C = x[2] if len(x) > 2 else None
    if a.get("transA", 0):
        A = A.transpose(0, 1)
    if a.get("transB", 0):
        B = B.transpose(0, 1)
    y = ctx.torch.matmul(A, B)
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if C is not None:
        y = y + (C * beta if beta != 1.0 else C)
    return y


def _softmax_like(fn_name: str):
    def run(ctx, x, a):
        t = x[0]
        axis = a.get("axis", -1 if ctx.opset >= 13 else 1)
        fn = getattr(ctx.torch, fn_name)
        if ctx.opset >= 13:
            return fn(t, dim=axis)
        # Opset < 13: coerce to 2D at ``axis``, normalise over the flattened tail.
        ax = _axis(axis, t.dim())
        lead = int(np.prod(t.shape[:ax])) if ax else 1
        return fn(t.reshape(lead, -1), dim=1).reshape(t.shape)

    return run


def _reduce(fn: str):
    def run(ctx, x, a):
        t = x[0]
        axes = a.get("axes")
        if axes is None and len(x) > 1 and x[1] is not None:
            axes = _ints(x[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return t
            axes = list(range(t.dim()))
        axes = sorted(_axis(int(v), t.dim()) for v in axes)
        if fn == "mean":
            return ctx.torch.mean(t, dim=axes, keepdim=keep)
        if fn == "sum":
            return ctx.torch.sum(t, dim=axes, keepdim=keep, dtype=t.dtype)
        if fn == "sumsquare":
            return ctx.torch.sum(t * t, dim=axes, keepdim=keep, dtype=t.dtype)
        out = t
        for ax in reversed(axes):
            out = (out.amax if fn == "max" else out.amin)(dim=ax, keepdim=keep)
        return out

    return run


def _cast(ctx, x, a):
    return x[0].to(torch_dtype(a["to"]))


def _transpose(ctx, x, a):
    perm = a.get("perm") or list(reversed(range(x[0].dim())))
    return x[0].permute(*perm)


def _reshape(ctx, x, a):
    t, shape = x[0], _ints(x[1])
    if not a.get("allowzero", 0):
        shape = [t.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return t.reshape(shape)


def _flatten(ctx, x, a):
    t = x[0]
    ax = _axis(a.get("axis", 1), t.dim())
    lead = int(np.prod(t.shape[:ax])) if ax else 1
    return t.reshape(lead, -1)


def _unsqueeze(ctx, x, a):
    t = x[0]
    axes = a.get("axes") if "axes" in a else _ints(x[1])
    rank = t.dim() + len(axes)
    for ax in sorted(_axis(int(v), rank) for v in axes):
        t = t.unsqueeze(ax)
    return t


def _squeeze(ctx, x, a):
    t = x[0]
    axes = a.get("axes") if "axes" in a else (_ints(x[1]) if len(x) > 1 and x[1] is not None else None)
    if axes is None:
        return t.squeeze()
    for ax in sorted((_axis(int(v), t.dim()) for v in axes), reverse=True):
        t = t.squeeze(ax)
    return t


def _concat(ctx, x, a):
    return ctx.torch.cat([t for t in x if t is not None], dim=a["axis"])


def _split(ctx, x, a, n_out: int):
    t = x[0]
    axis = _axis(a.get("axis", 0), t.dim())
    sizes = a.get("split")
    if sizes is None and len(x) > 1 and x[1] is not None:
        sizes = _ints(x[1])
    if sizes is None:
        n = a.get("num_outputs", n_out)
        chunk = math.ceil(t.shape[axis] / n)
        sizes = [min(chunk, t.shape[axis] - i * chunk) for i in range(n)]
    return tuple(ctx.torch.split(t, list(sizes), dim=axis))


def _conv(ctx, x, a):
    F = ctx.torch.nn.functional
    t, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    dims = w.dim() - 2
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UnsupportedOpError(f"Conv auto_pad={a['auto_pad']!r} is not supported (node {ctx.node.name})")
    pads = a.get("pads") or [0] * (2 * dims)
    begin, end = pads[:dims], pads[dims:]
    if begin != end:
        # Asymmetric padding: pad explicitly (F.pad takes the last dimension first).
        t = F.pad(t, [p for d in reversed(range(dims)) for p in (begin[d], end[d])])
        begin = [0] * dims
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return fn(t, w, b, stride=a.get("strides") or 1, padding=begin, dilation=a.get("dilations") or 1, groups=a.get("group", 1))


def _pool(kind: str):
    def run(ctx, x, a):
        F = ctx.torch.nn.functional
        t = x[0]
        dims = t.dim() - 2
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise UnsupportedOpError(f"{ctx.node.op_type} auto_pad={a['auto_pad']!r} is not supported (node {ctx.node.name})")
        k = a["kernel_shape"]
        pads = a.get("pads") or [0] * (2 * dims)
        begin, end = pads[:dims], pads[dims:]
        if begin != end:
            raise UnsupportedOpError(f"{ctx.node.op_type} with asymmetric pads {pads} is not supported (node {ctx.node.name})")
        strides = a.get("strides") or [1] * dims
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
            return fn(t, k, strides, begin, dilation=a.get("dilations") or 1, ceil_mode=ceil)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        return fn(t, k, strides, begin, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))

    return run


def _global_pool(kind: str):
    def run(ctx, x, a):
        t = x[0]
        dims = list(range(2, t.dim()))
        return t.mean(dim=dims, keepdim=True) if kind == "avg" else t.amax(dim=dims, keepdim=True)

    return run


def _layer_norm(ctx, x, a):
    t, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    axis = _axis(a.get("axis", -1), t.dim())
    shape = list(t.shape[axis:])
    return ctx.torch.nn.functional.layer_norm(t, shape, scale.expand(shape), None if bias is None else bias.expand(shape), a.get("epsilon", 1e-5))


def _batch_norm(ctx, x, a):
    t, scale, bias, mean, var = x[:5]
    return ctx.torch.nn.functional.batch_norm(t, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _clip(ctx, x, a):
    t = x[0]
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    lo = lo.item() if hasattr(lo, "item") else lo
    hi = hi.item() if hasattr(hi, "item") else hi
    return ctx.torch.clamp(t, lo, hi)


def _gather(ctx, x, a):
    t, idx = x
    axis = _axis(a.get("axis", 0), t.dim())
    idx = idx.long()
    idx = ctx.torch.where(idx < 0, idx + t.shape[axis], idx)
    out = ctx.torch.index_select(t, axis, idx.reshape(-1))
    return out.reshape(list(t.shape[:axis]) + list(idx.shape) + list(t.shape[axis + 1 :]))


def _slice(ctx, x, a):
    t = x[0]
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index = [slice(None)] * t.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise UnsupportedOpError(f"Slice with step {st} is not supported (node {ctx.node.name})")
        n = t.shape[_axis(ax, t.dim())]
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        index[_axis(ax, t.dim())] = slice(s, e, st)
    return t[tuple(index)]


def _constant(ctx, x, a):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = a[key]
            if key == "value":
                return ctx.tensor(numpy_helper.to_array(v))
            dtype = np.float32 if "float" in key else np.int64
            return ctx.tensor(np.asarray(v, dtype=dtype))
    raise UnsupportedOpError(f"Constant {ctx.node.name} has no supported value attribute ({sorted(a)})")


def _constant_of_shape(ctx, x, a):
    value = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    return ctx.torch.full(_ints(x[0]), value.reshape(-1)[0].item(), dtype=ctx.torch.from_numpy(value.reshape(-1)[:1].copy()).dtype, device=ctx.device)


def _shape(ctx, x, a):
    shape = list(x[0].shape)
    start, end = a.get("start", 0), a.get("end", len(shape))
    return ctx.torch.tensor(shape[start:end], dtype=ctx.torch.int64, device=ctx.device)


def _expand(ctx, x, a):
    t, shape = x[0], _ints(x[1])
    # ONNX Expand broadcasts both ways (a 1 in ``shape`` keeps the input's size).
    rank = max(t.dim(), len(shape))
    tshape = [1] * (rank - t.dim()) + list(t.shape)
    shape = [1] * (rank - len(shape)) + shape
    return t.reshape(tshape).expand([max(a_, b_) if 1 in (a_, b_) else b_ for a_, b_ in zip(tshape, shape)])


def _where(ctx, x, a):
    return ctx.torch.where(x[0].bool(), x[1], x[2])


def _variadic(fn_name: str):
    def run(ctx, x, a):
        out = x[0]
        for t in x[1:]:
            out = getattr(ctx.torch, fn_name)(out, t)
        return out

    return run


def _gelu(ctx, x, a):
    approx = a.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return ctx.torch.nn.functional.gelu(x[0], approximate=approx)


def _leaky_relu(ctx, x, a):
    return ctx.torch.nn.functional.leaky_relu(x[0], a.get("alpha", 0.01))


def _hard_sigmoid(ctx, x, a):
    return ctx.torch.clamp(x[0] * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1)


OPS: dict[str, Callable] = {
    "Add": _binary("add"),
    "Sub": _binary("sub"),
    "Mul": _binary("mul"),
    "Div": lambda ctx, x, a: (ctx.torch.div(x[0], x[1], rounding_mode="trunc") if not x[0].is_floating_point() else ctx.torch.div(x[0], x[1])),
    "Pow": _pow,
    "MatMul": _binary("matmul"),
    "Gemm": _gemm,
    "Relu": _unary("relu"),
    "Sigmoid": _unary("sigmoid"),
    "Tanh": _unary("tanh"),
    "Erf": _unary("erf"),
    "Sqrt": _unary("sqrt"),
    "Exp": _unary("exp"),
    "Log": _unary("log"),
    "Abs": _unary("abs"),
    "Neg": _unary("neg"),
    "Reciprocal": _unary("reciprocal"),
    "Floor": _unary("floor"),
    "Ceil": _unary("ceil"),
    "Not": _unary("logical_not"),
    "Equal": _binary("eq"),
    "Greater": _binary("gt"),
    "Less": _binary("lt"),
    "GreaterOrEqual": _binary("ge"),
    "LessOrEqual": _binary("le"),
    "And": _binary("logical_and"),
    "Or": _binary("logical_or"),
    "Max": _variadic("maximum"),
    "Min": _variadic("minimum"),
    "Sum": _variadic("add"),
    "Softmax": _softmax_like("softmax"),
    "LogSoftmax": _softmax_like("log_softmax"),
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "ReduceSumSquare": _reduce("sumsquare"),
    "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "Cast": _cast,
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Conv": _conv,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool("avg"),
    "GlobalMaxPool": _global_pool("max"),
    "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
    "Clip": _clip,
    "Gather": _gather,
    "Slice": _slice,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Shape": _shape,
    "Expand": _expand,
    "Where": _where,
    "Identity": lambda ctx, x, a: x[0],
    "Dropout": lambda ctx, x, a: x[0],
    "Gelu": _gelu,
    "LeakyRelu": _leaky_relu,
    "HardSigmoid": _hard_sigmoid,
}
#: Op types (default ONNX domain) the interpreter runs. Split is handled separately (several outputs).
SUPPORTED_OPS = frozenset(OPS) | {"Split"}


class _Context:
    """What an op implementation may use: torch, the device, the opset, the current node."""

    def __init__(self, torch, device, opset: int):
        self.torch = torch
        self.device = device
        self.opset = opset
        self.node: onnx.NodeProto | None = None

    def tensor(self, array: np.ndarray):
        arr = np.ascontiguousarray(array)
        if not arr.flags.writeable:
            # torch.from_numpy warns on read-only arrays (numpy_helper and np.load give them).
            arr = arr.copy()
        return self.torch.from_numpy(arr).to(self.device)


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """``'<node> (<op>)'`` for every main-graph node this interpreter cannot run."""
    bad = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            bad.append(f"{node.name or '?'} ({node.domain + '.' if node.domain else ''}{node.op_type})")
    return bad


class TorchRunner:
    """Run an ONNX model in PyTorch with the element types its graph declares.

    Args:
        model: ``ModelProto`` or path of an ``.onnx`` file (weights embedded or alongside).
        device: torch device, default ``"cuda"`` (real FP16 kernels); ``"cpu"`` works for
            testing the interpreter (CPU half kernels are not what a GPU does).

    Raises:
        UnsupportedOpError: the graph holds an op not in :data:`SUPPORTED_OPS` (all are listed).
        ImportError: torch is not installed.

    Example:
        >>> with TorchRunner(mixed_model, device="cuda") as runner:
        ...     outputs = runner.infer({"x": batch})
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, device: str = "cuda"):
        self.model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        bad = unsupported_ops(self.model)
        if bad:
            raise UnsupportedOpError(f"fp16guard.torch_fp16 cannot run {len(bad)} node(s): {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
        self.device = device
        self._consts: dict | None = None
        self._ctx: _Context | None = None
        opset = next((imp.version for imp in self.model.opset_import if imp.domain in ("", "ai.onnx")), 1)
        self._opset = opset

    def __enter__(self) -> "TorchRunner":
        torch = _torch()
        self._ctx = _Context(torch, torch.device(self.device), self._opset)
        # Initializers keep their stored dtype (FP16 weights stay FP16).
        self._consts = {t.name: self._ctx.tensor(numpy_helper.to_array(t)) for t in self.model.graph.initializer}
        return self

    def __exit__(self, *exc) -> None:
        self._consts = None
        self._ctx = None

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    def infer(self, feeds: Mapping[str, np.ndarray], output_names=None) -> dict[str, np.ndarray]:
        """Run the graph once; returns output name -> numpy array (FP16 outputs stay float16).

        Graph inputs are converted to the element type the graph declares for them.
        """
        if self._ctx is None:
            raise RuntimeError("TorchRunner is not active; use it as a context manager")
        ctx, torch = self._ctx, self._ctx.torch
        values: dict = dict(self._consts)
        for inp in self.model.graph.input:
            if inp.name in values:
                continue
            if inp.name not in feeds:
                raise KeyError(f"missing input '{inp.name}'")
            t = ctx.tensor(np.asarray(feeds[inp.name]))
            elem = inp.type.tensor_type.elem_type
            values[inp.name] = t.to(torch_dtype(elem)) if elem else t
        wanted = list(output_names) if output_names is not None else self.output_names
        # Free each intermediate after its last use: memory stays near one layer's worth.
        last_use: dict[str, int] = {}
        for i, node in enumerate(self.model.graph.node):
            for name in node.input:
                last_use[name] = i
        keep = set(wanted) | set(self._consts)
        with torch.no_grad():
            for i, node in enumerate(self.model.graph.node):
                ctx.node = node
                args = [values[n] if n else None for n in node.input]
                attrs = _attrs(node)
                try:
                    if node.op_type == "Split":
                        result = _split(ctx, args, attrs, len(node.output))
                    else:
                        result = OPS[node.op_type](ctx, args, attrs)
                except UnsupportedOpError:
                    raise
                except Exception as exc:
                    raise RuntimeError(f"node {node.name} ({node.op_type}) failed in torch: {type(exc).__name__}: {exc}") from exc
                results = result if isinstance(result, tuple) else (result,)
                for name, value in zip(node.output, results):
                    if name:
                        values[name] = value
                for name in node.input:
                    if name and last_use.get(name) == i and name not in keep:
                        values.pop(name, None)
        out = {}
        for name in wanted:
            t = values[name]
            if t.dtype == torch.bfloat16:
                t = t.float()
            out[name] = t.detach().cpu().numpy()
        return out
