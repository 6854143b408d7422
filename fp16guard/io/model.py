"""Loading and normalising ONNX models, and describing their inputs.

Every stage loads models through :func:`load_model`, so node names are the same everywhere:
unnamed nodes get deterministic names (``<op_type>_<index>``), duplicate names get a ``__<k>``
suffix, IR-version < 4 models stop listing initializers among the graph inputs (docs/FACTS.md #6), and
sparse initializers become dense ones (as onnxruntime loads them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from fp16guard.errors import ModelError
from fp16guard.io.hashing import sha256_file

#: ONNX element types treated as floating point (statistics and precision apply to these).
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})


@dataclass(frozen=True)
class InputSpec:
    """One graph input as the model declares it.

    Attributes:
        name: input tensor name.
        dtype: numpy dtype of the input.
        shape: one entry per dimension: an int for a static size, a str (symbolic name) or None
            for a dynamic one. ``None`` for the whole tuple when the rank is unknown.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        """``'x' (float32, [batch, 32])`` — the form used in error messages."""
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        return f"'{self.name}' ({self.dtype}, {dims})"


def load_model(path: str | os.PathLike, load_weights: bool = True) -> onnx.ModelProto:
    """Load, check and normalise an ONNX model.

    Args:
        path: the ``.onnx`` file. External data files are resolved relative to its folder.
        load_weights: load external-data initializers into memory (default True). With False,
            external tensors keep their references (embedded weights are always loaded).

    Returns:
        The normalised model (see module docstring).

    Raises:
        ModelError: the file is missing, is not a valid ONNX model, or its external data is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist; expected an .onnx file")
    try:
        # The graph first, the weights after their locations are checked: a location outside
        # the model's folder is refused before anything there is opened.
        model = onnx.load(str(path), load_external_data=False)
        if load_weights and _external_locations(model):
            from fp16guard.io.lazy_weights import check_external_locations

            check_external_locations(model, path)
            onnx.load_external_data_for_model(model, str(path.parent))
    except ModelError:
        raise
    except FileNotFoundError as exc:
        raise ModelError(f"model {path} refers to external data that is missing: {exc.filename or exc}") from None
    except Exception as exc:  # protobuf raises DecodeError and friends
        match = re.search(r"should be stored in (\S+?),? but", str(exc))
        if match:
            raise ModelError(f"model {path} refers to external data that is missing: {match.group(1)}; expected the weight files beside the model") from None
        raise ModelError(f"model {path} is not a valid ONNX file ({type(exc).__name__}: {exc}); expected a serialized ModelProto") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"model {path} has an empty graph; expected an ONNX model with nodes and outputs")
    try:
        # Large models cannot go through check_model's 2 GB in-memory path; check the file then.
        onnx.checker.check_model(str(path) if model.ByteSize() > PROTOBUF_LIMIT or not load_weights else model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model {path} is not a valid ONNX model: {first}") from None
    normalize_model(model)
    return model


def load_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """Load a model's graph cheaply: large initializers stay in the file as external-data
    references (:func:`fp16guard.io.lazy_weights.load_graph_only`), node names normalised as in
    :func:`load_model`. For input specs, plans and lineage, where the weights' bytes are not
    needed (their values are read from the file on demand; see ``plan.make_plan(weights_dir=)``).

    Checks that the file parses and that every external-data file it names exists; the full ONNX
    checker is left to :func:`load_model` and onnxruntime (it would read every weight).

    Raises:
        ModelError: the file is missing, not a ModelProto, or names a missing weights file.
    """
    from fp16guard.io.lazy_weights import load_graph_only

    path = Path(path)
    model = load_graph_only(path)
    for location in sorted(_external_locations(model)):
        if not (path.parent / location).is_file():
            raise ModelError(f"model {path} refers to external data that is missing: {path.parent / location}; expected the weight files beside the model")
    return normalize_model(model)


def normalize_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique deterministic name, drop initializers from graph inputs, and
    turn sparse initializers into dense ones.

    Edits ``model`` in place and returns it. Idempotent.

    Raises:
        ModelError: a sparse initializer cannot be made dense (external or malformed data).
    """
    graph = model.graph
    if graph.sparse_initializer:
        # onnxruntime densifies sparse initializers when it loads a model; ONNX type inference
        # types them as sparse tensors that no dense op accepts, so every pass (types, statistics,
        # conversion, checker) would see an untyped or invalid weight. Dense it is, here, once.
        graph.initializer.extend(_densify(t) for t in graph.sparse_initializer)
        del graph.sparse_initializer[:]
    init_names = {t.name for t in graph.initializer}
    if any(i.name in init_names for i in graph.input):
        # IR < 4 lists initializers as inputs; they are constants, not things to feed.
        keep = [i for i in graph.input if i.name not in init_names]
        del graph.input[:]
        graph.input.extend(keep)
        # IR < 4 requires every initializer to be a graph input; IR 4 is the first version
        # that allows otherwise, and changes nothing else a valid older model relies on.
        model.ir_version = max(model.ir_version, 4)
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        base, k = name, 2
        while name in seen:
            name, k = f"{base}__{k}", k + 1
        node.name = name
        seen.add(name)
    return model


def _densify(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    """The dense initializer of a sparse one (same name and element type; zeros elsewhere).

    Raises:
        ModelError: its values or indices are stored as external data that is not loaded, or
            the indices do not fit its shape.
    """
    from onnx import numpy_helper

    name = sparse.values.name
    if TensorProto.EXTERNAL in (sparse.values.data_location, sparse.indices.data_location):
        raise ModelError(f"sparse initializer {name!r} keeps its values in external data; expected a sparse initializer stored in the model file")
    dims = tuple(int(d) for d in sparse.dims)
    values = numpy_helper.to_array(sparse.values).reshape(-1)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dense = np.zeros(dims, dtype=values.dtype)
    try:
        if indices.ndim == 2:  # [NNZ, rank] coordinates
            dense[tuple(indices.T)] = values
        else:  # [NNZ] positions in the flattened tensor
            dense.reshape(-1)[indices] = values
    except (IndexError, ValueError) as exc:
        raise ModelError(f"sparse initializer {name!r} has indices that do not fit its shape {list(dims)} ({exc}); expected indices inside the dense shape") from None
    return numpy_helper.from_array(dense, name)


#: Protobuf cannot serialize a message of 2 GiB or more: such models keep their weights in a file beside them.
PROTOBUF_LIMIT = 2**31 - 1


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically; a model too large for one protobuf message
    (:data:`PROTOBUF_LIMIT`) keeps its weights in ``<file name>.data`` beside it.

    The weights file is renamed into place first, then the ``.onnx``, so a reader that finds the
    model finds its weights. Side effect for large models: ``model``'s initializers become
    external-data references (onnx converts them in place while saving). Returns ``path``.
    """
    import shutil
    import tempfile

    from fp16guard.io import atomic

    path = Path(path)
    if model.ByteSize() < PROTOBUF_LIMIT:
        with atomic.atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
        return path
    data_name = f"{path.name}.data"
    path.parent.mkdir(parents=True, exist_ok=True)
    # onnx writes the weights under ``location`` relative to the model file's folder: save both
    # into a private folder on the same file system, then move each into place atomically.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".save-") as work:
        onnx.save(model, str(Path(work) / path.name), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        with atomic.atomic_path(path.parent / data_name) as tmp:
            shutil.move(str(Path(work) / data_name), tmp)
        with atomic.atomic_path(path) as tmp:
            shutil.move(str(Path(work) / path.name), tmp)
    return path


def model_digest(path: str | os.PathLike) -> str:
    """sha256 of the model file, extended with every external-data file it references.

    For a model without external data this is the file's sha256.
    """
    path = Path(path)
    files = external_data_files(path)
    if not files:
        return sha256_file(path)
    import hashlib

    h = hashlib.sha256(sha256_file(path).encode())
    for f in files:
        h.update(f"\n{f.name}:{sha256_file(f)}".encode())
    return h.hexdigest()


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The external-data files a model references, sorted, as paths (may not exist).

    Reads the graph only (:func:`fp16guard.io.lazy_weights.load_graph_only`): embedded weights are
    not loaded, and the references it makes into the model file itself are not external files.
    """
    from fp16guard.io.lazy_weights import load_graph_only

    path = Path(path)
    return sorted(path.parent / n for n in _external_locations(load_graph_only(path)) - {path.name})


def _external_locations(model: onnx.ModelProto) -> set[str]:
    """``location`` of every external-data tensor of the model, subgraphs included."""
    from fp16guard.io.lazy_weights import external_locations

    return external_locations(model)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's graph inputs (initializers excluded) as :class:`InputSpec` objects."""
    init_names = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in init_names:
            continue
        ttype = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)) if ttype.elem_type else np.dtype("float32")
        if ttype.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim
            )
        else:
            shape = None
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    """The opset version the model imports for ``domain`` (default: the ONNX domain)."""
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return imp.version
    return 1
