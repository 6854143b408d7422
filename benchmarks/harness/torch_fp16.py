"""Ground truth for FP16 on a GPU: run an ONNX model in PyTorch with its declared dtypes.

onnxruntime's CPU provider hides FP16 overflow (docs/FACTS.md #1) and the lent GPU machine has no
onnxruntime-gpu (docs/FACTS.md #8), so this small interpreter executes an ONNX graph node by node with
PyTorch. Every tensor keeps the element type the graph gives it: FP16 initializers stay FP16,
``Cast`` changes types, and each op runs on the dtypes of its inputs, so on CUDA an FP16 node runs
real FP16 kernels (cuBLAS half GEMMs round their outputs to FP16 and overflow to inf) and an FP32
island runs in FP32. That is what a mixed-precision model does on an FP16 runtime, and what FP16
storage emulation (``fp16guard.graph.emulate``) claims to reproduce on the CPU.

Scope: the main graph of models built from the ops in :data:`SUPPORTED_OPS` (the examples and
typical CNN/MLP/transformer graphs as PyTorch exports them, including Mod, ArgMax/ArgMin, Einsum,
TopK, CumSum and Resize in its ``nearest`` and ``linear`` modes). An op outside that list raises
:class:`UnsupportedOpError` naming the node, before any computation; an unsupported attribute
value (Resize ``cubic``, ``antialias``, ``tf_crop_and_resize``...) raises it when the node runs. ``torch`` is imported lazily: it is not a dependency of
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
        raise ImportError("torch_fp16 needs PyTorch (pip install torch); it is not an fp16guard dependency") from exc
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


def _mod(ctx, x, a):
    # ONNX Mod: fmod=0 (integers only) takes the divisor's sign (Python %), fmod=1 the dividend's (C fmod).
    if a.get("fmod", 0):
        return ctx.torch.fmod(x[0], x[1])
    if x[0].is_floating_point():
        raise UnsupportedOpError(f"Mod with fmod=0 on floating inputs is invalid ONNX (node {ctx.node.name})")
    return ctx.torch.remainder(x[0], x[1])


def _arg_extreme(largest: bool):
    def run(ctx, x, a):
        t = x[0]
        axis = _axis(a.get("axis", 0), t.dim())
        keep = bool(a.get("keepdims", 1))
        fn = ctx.torch.argmax if largest else ctx.torch.argmin
        if a.get("select_last_index", 0):
            # torch returns the first extreme; on the flipped axis that is the last one.
            idx = fn(t.flip(axis), dim=axis, keepdim=keep)
            return (t.shape[axis] - 1) - idx
        return fn(t, dim=axis, keepdim=keep)

    return run


def _einsum(ctx, x, a):
    eq = a["equation"]
    eq = eq.decode() if isinstance(eq, bytes) else eq
    return ctx.torch.einsum(eq.replace(" ", ""), *x)


def _topk(ctx, x, a):
    t, k = x[0], int(_ints(x[1])[0])
    axis = _axis(a.get("axis", -1), t.dim())
    largest = bool(a.get("largest", 1))
    # ONNX: among equal values the lower index comes first. torch.topk does not promise an order
    # for ties (CUDA differs from CPU), so take the head of a stable sort instead. ``sorted=0``
    # allows any order; a sorted result is one of them.
    values, indices = ctx.torch.sort(t, dim=axis, descending=largest, stable=True)
    return values.narrow(axis, 0, k).contiguous(), indices.narrow(axis, 0, k).contiguous()


def _cumsum(ctx, x, a):
    t = x[0]
    axis = _axis(int(_ints(x[1])[0]), t.dim())
    reverse, exclusive = bool(a.get("reverse", 0)), bool(a.get("exclusive", 0))
    if reverse:
        t = t.flip(axis)
    # dtype=t.dtype: torch promotes integer sums to int64, ONNX keeps the input type. For
    # FP16 on CUDA torch accumulates in FP32 and stores FP16, as an FP16 runtime kernel does.
    out = ctx.torch.cumsum(t, dim=axis, dtype=t.dtype)
    if exclusive:
        zeros = ctx.torch.zeros_like(t.narrow(axis, 0, 1))
        out = ctx.torch.cat([zeros, out.narrow(axis, 0, t.shape[axis] - 1)], dim=axis)
    if reverse:
        out = out.flip(axis)
    return out


def _str_attr(a: dict, key: str, default: str) -> str:
    v = a.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _resize_source_coords(mode: str, out_len: int, in_len: int, scale: float) -> np.ndarray:
    """ONNX ``coordinate_transformation_mode``: input coordinate of each output index (float32, as
    onnxruntime computes them)."""
    xr = np.arange(out_len, dtype=np.float32)
    s = np.float32(scale)
    if mode == "half_pixel":
        return (xr + np.float32(0.5)) / s - np.float32(0.5)
    if mode == "pytorch_half_pixel":
        return (xr + np.float32(0.5)) / s - np.float32(0.5) if out_len > 1 else np.zeros(out_len, np.float32)
    if mode == "half_pixel_symmetric":
        adjustment = np.float32(out_len) / (s * np.float32(in_len))
        center = np.float32(in_len) / np.float32(2)
        offset = center * (np.float32(1) - adjustment)
        return offset + (xr + np.float32(0.5)) / s - np.float32(0.5)
    if mode == "align_corners":
        if out_len == 1:
            return np.zeros(1, np.float32)
        return xr * np.float32(in_len - 1) / np.float32(out_len - 1)
    if mode == "asymmetric":
        return xr / s
    if mode == "tf_half_pixel_for_nn":
        return (xr + np.float32(0.5)) / s
    raise UnsupportedOpError(f"Resize coordinate_transformation_mode={mode!r} is not supported")


def _nearest_index(coords: np.ndarray, mode: str, in_len: int) -> np.ndarray:
    frac = coords - np.floor(coords)
    if mode == "round_prefer_floor":
        idx = np.where(frac == 0.5, np.floor(coords), np.round(coords))
    elif mode == "round_prefer_ceil":
        idx = np.where(frac == 0.5, np.ceil(coords), np.round(coords))
    elif mode == "floor":
        idx = np.floor(coords)
    elif mode == "ceil":
        idx = np.ceil(coords)
    else:
        raise UnsupportedOpError(f"Resize nearest_mode={mode!r} is not supported")
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def _resize(ctx, x, a):
    """ONNX Resize (opsets 11-19), modes ``nearest`` and ``linear``, separably along each axis.

    Each resized axis gathers (nearest) or blends two gathered neighbours (linear, indices clamped
    to the edge, which is what onnxruntime does outside the image). Linear blending runs in FP32
    and stores the input's type: PyTorch's own FP16 interpolation kernels accumulate in FP32 too.
    """
    torch = ctx.torch
    t = x[0]
    name = ctx.node.name
    mode = _str_attr(a, "mode", "nearest")
    coord_mode = _str_attr(a, "coordinate_transformation_mode", "half_pixel" if ctx.opset >= 11 else "asymmetric")
    if mode not in ("nearest", "linear"):
        raise UnsupportedOpError(f"Resize mode={mode!r} is not supported, only 'nearest' and 'linear' (node {name})")
    if coord_mode == "tf_crop_and_resize":
        raise UnsupportedOpError(f"Resize coordinate_transformation_mode='tf_crop_and_resize' is not supported (node {name})")
    if a.get("antialias", 0):
        raise UnsupportedOpError(f"Resize antialias=1 is not supported (node {name})")
    if _str_attr(a, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedOpError(f"Resize keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']!r} is not supported (node {name})")
    if ctx.opset < 11:
        # Resize-10 has no coordinate modes; its nearest rounding differs between runtimes.
        raise UnsupportedOpError(f"Resize from opset {ctx.opset} is not supported, only opset 11 and later (node {name})")
    rank = t.dim()
    axes = [_axis(int(v), rank) for v in a.get("axes", range(rank))]
    scales_t = x[2] if len(x) > 2 else None
    sizes_t = x[3] if len(x) > 3 else None
    if scales_t is not None and scales_t.numel() == 0:
        scales_t = None
    if sizes_t is not None and sizes_t.numel() == 0:
        sizes_t = None
    if scales_t is None and sizes_t is None:
        raise UnsupportedOpError(f"Resize without scales or sizes (node {name})")
    in_shape = list(t.shape)
    if sizes_t is not None:
        outs = _ints(sizes_t)
        scales = [o / in_shape[ax] for o, ax in zip(outs, axes)]
    else:
        scales = [float(v) for v in scales_t.reshape(-1).float().cpu().tolist()]
        outs = [int(math.floor(in_shape[ax] * s)) for ax, s in zip(axes, scales)]
    nearest_mode = _str_attr(a, "nearest_mode", "round_prefer_floor")
    # Linear blending runs in FP32 (FP64 for doubles and integers) across all axes and is
    # stored in the input's type once at the end, as one multi-linear kernel would.
    work_dtype = torch.float64 if t.dtype == torch.float64 or not t.is_floating_point() else torch.float32
    blended_any = False
    out = t
    for ax, o, s in zip(axes, outs, scales):
        n = in_shape[ax]
        if o == n and s == 1.0:
            continue
        try:
            coords = _resize_source_coords(coord_mode, o, n, s)
            idx = _nearest_index(coords, nearest_mode, n) if mode == "nearest" else None
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(f"{exc} (node {name})") from None
        if idx is not None:
            idx = torch.from_numpy(idx).to(ctx.device)
            out = out.index_select(ax, idx)
            continue
        lo = np.floor(coords)
        w = (coords - lo).astype(np.float32)
        i0 = np.clip(lo, 0, n - 1).astype(np.int64)
        i1 = np.clip(lo + 1, 0, n - 1).astype(np.int64)
        view = [1] * rank
        view[ax] = o
        wt = torch.from_numpy(w).to(ctx.device).reshape(view).to(work_dtype)
        src = out.to(work_dtype)
        a0 = src.index_select(ax, torch.from_numpy(i0).to(ctx.device))
        a1 = src.index_select(ax, torch.from_numpy(i1).to(ctx.device))
        out = a0 * (1 - wt) + a1 * wt
        blended_any = True
    if blended_any and out.dtype != t.dtype:
        out = out.round().to(t.dtype) if not t.is_floating_point() else out.to(t.dtype)
    return out


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
    "Mod": _mod,
    "ArgMax": _arg_extreme(True),
    "ArgMin": _arg_extreme(False),
    "Einsum": _einsum,
    "TopK": _topk,
    "CumSum": _cumsum,
    "Resize": _resize,
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
        # Not np.ascontiguousarray: it turns 0-d arrays (scalar Constants, Gather indices) into
        # 1-d ones, and ONNX shape arithmetic depends on the rank.
        arr = np.asarray(array)
        if not arr.flags.c_contiguous or not arr.flags.writeable:
            # torch.from_numpy warns on read-only arrays (numpy_helper and np.load give them).
            arr = np.array(arr, order="C", copy=True)
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
            raise UnsupportedOpError(f"torch_fp16 cannot run {len(bad)} node(s): {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
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
