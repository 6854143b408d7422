"""Load an ONNX model's graph without its weights, the weights staying in the file.

Why: the stats pass must cost about what a plain onnxruntime pass costs (issue 2). ``onnx.load``
copies every weight into Python, serializing the instrumented model copies them again, and
onnxruntime copies them a third time — three copies of a 550 MB model at the peak. Here the model
file is scanned at the protobuf wire level (memory-mapped; only headers are read) and every large
initializer is rewritten as an *external-data reference into the original file* (offset and
length of its payload there). onnxruntime then reads the weights straight from the file, as it
does for a plain session, and Python never holds them.

Used with :class:`fp16guard.runners.onnxrt.OnnxRuntimeRunner` and ``external_data_dir`` set to
the model's folder (onnxruntime refuses external paths outside that folder).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import onnx
from onnx import TensorProto

from fp16guard.errors import ModelError

#: Payloads at least this large (bytes) become references; small ones (shapes, scalars) stay
#: inline so shape inference and constant folding still see them.
MIN_EXTERNAL_BYTES = 1024

# Wire-format field numbers (onnx.proto).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_FLOAT_DATA = 4
_TENSOR_RAW_DATA = 9
_TENSOR_DOUBLE_DATA = 10
_TENSOR_DATA_TYPE = 2
_TENSOR_EXTERNAL = 13
_TENSOR_LOCATION = 14
# Packed payloads whose bytes on disk are exactly the little-endian tensor bytes.
_FIXED_WIDTH_FIELDS = {_TENSOR_RAW_DATA: None, _TENSOR_FLOAT_DATA: TensorProto.FLOAT, _TENSOR_DOUBLE_DATA: TensorProto.DOUBLE}


class _WireError(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise _WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _WireError("varint too long")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, field start, payload start, payload end) over a message."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos2 = _varint(buf, pos, end)
            yield number, wire, field_start, pos, pos2
        elif wire == 1:
            pos2 = pos + 8
            yield number, wire, field_start, pos, pos2
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            pos2 = pos + length
            yield number, wire, field_start, pos, pos2
        elif wire == 5:
            pos2 = pos + 4
            yield number, wire, field_start, pos, pos2
        else:
            raise _WireError(f"unsupported wire type {wire}")
        if pos2 > end:
            raise _WireError("field runs past its message")
        pos = pos2


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _rewrite_tensor(buf, start: int, end: int, location: str) -> bytes | None:
    """Return the tensor's bytes with its payload replaced by an external reference, or None
    when the tensor has no large fixed-width payload (it is then copied as is)."""
    payload = None
    data_type = 0
    for number, wire, fstart, pstart, pend in _fields(buf, start, end):
        if number == _TENSOR_DATA_TYPE and wire == 0:
            data_type, _ = _varint(buf, pstart, pend)
        elif number in (_TENSOR_EXTERNAL, _TENSOR_LOCATION):
            return None  # already external: keep its own reference
        elif number in _FIXED_WIDTH_FIELDS and wire == 2 and pend - pstart >= MIN_EXTERNAL_BYTES:
            payload = (number, fstart, pstart, pend)
    if payload is None:
        return None
    number, fstart, pstart, pend = payload
    if _FIXED_WIDTH_FIELDS[number] not in (None, data_type):
        return None
    head = bytes(buf[start:fstart])
    tail = bytes(buf[pend:end])
    refs = b"".join(
        _len_field(_TENSOR_EXTERNAL, _len_field(1, key.encode()) + _len_field(2, value.encode()))
        for key, value in (("location", location), ("offset", str(pstart)), ("length", str(pend - pstart)))
    )
    return head + tail + refs + _encode_varint(_TENSOR_LOCATION << 3 | 0) + _encode_varint(TensorProto.EXTERNAL)


def load_graph_only(path: str | os.PathLike) -> onnx.ModelProto:
    """Load a model whose large initializers point into the model file instead of being copied.

    Args:
        path: the ``.onnx`` file. Initializers already stored as external data keep their
            references (relative to the same folder).

    Returns:
        A ModelProto whose large initializers (>= 1 KiB of raw, float or double data) are external
        references ``location=<file name>, offset, length``. Resolve them against the model's
        folder (``external_data_dir``). Nothing is written to disk.

    Raises:
        ModelError: the file is missing or is not a serialized ModelProto.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist; expected an .onnx file")
    problem = None
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise _WireError("empty file")
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                data = _rewrite_model(memoryview(buf), size, path.name)
            except Exception as exc:  # noqa: BLE001 - any parse failure means "not a model"
                # Keep only the text: the traceback's frames hold views of the mapping, and
                # closing it while they live raises BufferError instead (seen on text files).
                problem = f"not protobuf: {exc}" if isinstance(exc, _WireError) else f"{type(exc).__name__}: {exc}"
            finally:
                try:
                    buf.close()
                except BufferError:
                    # A view is still referenced elsewhere: a Dask worker's profiler samples every
                    # thread's frames, and a sample holding _rewrite_model's frame keeps its view
                    # alive (seen: "cannot close exported pointers exist" on a valid model). The
                    # mapping is unmapped when the last view goes; the model was read.
                    pass
        if problem is None:
            model = onnx.ModelProto.FromString(data)
    except Exception as exc:
        if isinstance(exc, ModelError):
            raise
        problem = f"not protobuf: {exc}" if isinstance(exc, _WireError) else f"{type(exc).__name__}: {exc}"
    if problem is not None:
        raise ModelError(f"model {path} is not a valid ONNX file ({problem}); expected a serialized ModelProto")
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"model {path} has an empty graph; expected an ONNX model with nodes and outputs")
    check_external_locations(model, path)
    return model


def external_locations(model: onnx.ModelProto) -> set[str]:
    """``location`` of every external-data tensor of ``model`` (initializers, tensor attributes
    and subgraphs included)."""
    names: set[str] = set()
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return names


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensors(g)


def check_external_locations(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Refuse a model whose external data would be read from outside its own folder.

    A location is accepted when it is relative, has no ``..`` part, and — symbolic links
    resolved — names something inside the model file's folder. Nothing is opened: this runs on
    the graph before any weight is read, so ``location: ../../etc/passwd`` is never hashed or read
    (onnxruntime refuses such models too, but only after we would have read them).

    Raises:
        ModelError: one line naming the model and the offending location.
    """
    path = Path(path)
    folder = path.parent.resolve()
    for location in sorted(external_locations(model)):
        parts = location.replace("\\", "/").split("/")
        bad = not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]
        if not bad:
            target = (folder / location).resolve()
            bad = folder != target and folder not in target.parents
        if bad:
            raise ModelError(
                f"model {path} refers to external data at {location!r}, outside the model's folder {folder}; "
                "expected weight files beside the model (relative names, no '..', no links out of the folder)"
            )


def _rewrite_model(buf, size: int, location: str) -> bytes:
    parts: list[bytes] = []
    try:
        for number, wire, fstart, pstart, pend in _fields(buf, 0, size):
            if number == _MODEL_GRAPH and wire == 2:
                parts.append(_len_field(_MODEL_GRAPH, _rewrite_graph(buf, pstart, pend, location)))
            else:
                parts.append(bytes(buf[fstart:pend]))
        return b"".join(parts)
    finally:
        del buf  # release the memoryview before the mmap closes


def _rewrite_graph(buf, start: int, end: int, location: str) -> bytes:
    parts: list[bytes] = []
    for number, wire, fstart, pstart, pend in _fields(buf, start, end):
        rewritten = None
        if number == _GRAPH_INITIALIZER and wire == 2:
            rewritten = _rewrite_tensor(buf, pstart, pend, location)
        parts.append(_len_field(number, rewritten) if rewritten is not None else bytes(buf[fstart:pend]))
    return b"".join(parts)
