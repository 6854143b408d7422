"""Calibration and holdout data: finding shards, loading them, checking them against the model.

A *shard* is one unit of data and of caching: one ``.npz`` file (arrays keyed by input name),
or one feed dict of a Polygraphy JSON inputs file (the list-of-feed-dicts format of
``polygraphy run --load-inputs``). Shards are loaded one at a time, so memory does not grow with
the number of shards.

**Shards by URL.** A location may be an fsspec URL (``s3://bucket/prefix``, ``memory://...``):
it is expanded by the same rules as a local one (:mod:`fp16guard.io.remote`), the
:class:`ShardRef` keeps the object's URL (never its bytes), and whoever loads it opens it. Its
digest is the sha256 of the object's bytes, as for a local file (not an ETag).

**Batch axes.** A shard may hold several samples, and a run may slice it (``--batch-size``, a
static batch in the model). Slicing happens only along an axis the model's input shapes declare
as the *same symbolic dimension* (:func:`batch_axes`): for ``x [N, T, 80]``, ``state [2, N, 128]``
and a rank-0 ``sample_rate``, ``N`` is the batch, on axis 0 of ``x`` and axis 1 of ``state``,
and ``sample_rate`` is fed whole with every slice. When no input has a batch axis, each shard is
one inference. Models without named dimensions keep the leading axis as the batch where the
inputs agree on it.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import io
import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from fp16guard.errors import DataError, EnvironmentFailure, NonFiniteError, UserError
from fp16guard.io.hashing import sha256_bytes, sha256_file
from fp16guard.io.model import InputSpec
from fp16guard.io.urls import is_remote

__all__ = [
    "ShardRef",
    "header_samples",
    "Feeds",
    "discover_shards",
    "load_shard",
    "read_shard",
    "shard_digest",
    "shard_digests",
    "shard_location",
    "shard_bytes",
    "arrays_digest",
    "peek_shard",
    "batch_axes",
    "check_layout",
    "prepare_feeds",
    "batch_count",
    "slice_size",
    "iter_slices",
    "head",
    "shard_context",
]


@dataclass(frozen=True)
class ShardRef:
    """Where one shard lives.

    Attributes:
        name: display name, unique within a data set: the file path as given (an object's URL),
            plus ``[i]`` for the i-th feed dict of a JSON file.
        path: the file holding it: a local path, or an fsspec URL (``s3://bucket/key``).
        index: position in a Polygraphy JSON list; None for ``.npz`` files.
        sha256: the shard's digest (:func:`shard_digest`) when the run has computed it (the
            flow's discovery does): :func:`read_shard` refuses a shard whose bytes no longer
            match it, so a result is never cached under the digest of other data. None: unknown.
            Not part of equality (a shard is where it lives).
    """

    name: str
    path: str
    index: int | None = None
    sha256: str | None = field(default=None, compare=False)


def discover_shards(paths: Sequence[str | os.PathLike], role: str = "calibration") -> list[ShardRef]:
    """Expand user-given locations into an ordered list of shards.

    Each location may be a directory (its ``*.npz`` files, sorted), a glob pattern, a single
    ``.npz`` file, or a Polygraphy JSON inputs file (one shard per feed dict); or the same as an
    fsspec URL (a prefix, a glob, an object: :func:`fp16guard.io.remote.expand`), whose shards
    keep their object URLs. Duplicates (the same file reached twice) are kept once, in
    first-seen order.

    Args:
        paths: the locations, as given on the command line.
        role: "calibration" or "holdout", used in error messages.

    Raises:
        DataError: a location does not exist or matches nothing (a URL: its bucket is missing,
            no object is under its prefix), a file has an unsupported suffix, or the whole set
            is empty.
        EnvironmentFailure: an object store or the network failed while listing a URL.
    """
    if not paths:
        raise DataError(f"no {role} data given; expected one or more .npz files, folders, globs or Polygraphy JSON files")
    files: list[Path | str] = []  # local paths, or object URLs (str)
    for raw in paths:
        text = str(raw)
        if is_remote(text):
            from fp16guard.io import remote

            files.extend(remote.expand(text, role))
            continue
        p = Path(text)
        if p.is_dir():
            found = sorted(p.glob("*.npz")) + sorted(p.glob("*.json"))
            if not found:
                raise DataError(f"{role} folder {text} holds no .npz or .json files; expected one shard per .npz file")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif globlib.has_magic(text):
            found = sorted(Path(m) for m in globlib.glob(text, recursive=True) if Path(m).is_file())
            if not found:
                raise DataError(f"{role} pattern {text} matches no file; expected .npz or Polygraphy JSON files")
            files.extend(found)
        else:
            raise DataError(f"{role} data {text} does not exist; expected a .npz file, a folder of them, a glob or a Polygraphy JSON file")
    shards: list[ShardRef] = []
    seen: set[str] = set()
    for f in files:
        key = f if isinstance(f, str) else str(f.resolve())
        if key in seen:
            continue
        seen.add(key)
        suffix = posixpath.splitext(f)[1] if isinstance(f, str) else f.suffix
        if suffix.lower() == ".npz":
            shards.append(ShardRef(str(f), str(f)))
        elif suffix.lower() == ".json":
            count = len(_load_json_feeds(f))
            shards.extend(ShardRef(f"{f}[{i}]", str(f), i) for i in range(count))
        else:
            raise DataError(f"{role} file {f} has suffix '{suffix}'; expected .npz or a Polygraphy JSON inputs file (.json)")
    if not shards:
        raise DataError(f"the {role} set is empty; expected at least one shard with at least one sample")
    return shards


def _load_json_feeds(path: Path | str) -> list[dict]:
    # Polygraphy's reader decodes its base64 .npy encoding; imported lazily (slow import).
    if is_remote(str(path)):
        from fp16guard.io import remote

        text = remote.read_bytes(str(path), f"Polygraphy JSON inputs file {path}")
    try:
        from polygraphy.json import from_json, load_json

        feeds = from_json(text.decode("utf-8")) if is_remote(str(path)) else load_json(str(path))
    except Exception as exc:
        raise DataError(f"{path} is not a Polygraphy JSON inputs file ({type(exc).__name__}: {exc}); expected the output of 'polygraphy run --save-inputs'") from None
    if isinstance(feeds, dict):
        feeds = [feeds]
    if not isinstance(feeds, list) or not all(isinstance(f, dict) for f in feeds):
        raise DataError(f"{path} holds {type(feeds).__name__}; expected a list of feed dicts (input name -> array)")
    return feeds


def load_shard(ref: ShardRef) -> dict[str, np.ndarray]:
    """Load one shard's arrays into memory (a URL's object is read whole, in one GET).

    Raises:
        DataError: the file cannot be read as the format its suffix says; a remote shard no
            longer matches ``ref.sha256`` (see :func:`read_shard`).
        EnvironmentFailure: an object store or the network failed.
    """
    if is_remote(ref.path):
        return read_shard(ref)[0]
    if ref.index is not None:
        return _json_feed(ref, _load_json_feeds(Path(ref.path)))
    try:
        with np.load(ref.path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise DataError(f"shard {ref.name} is not a readable .npz file ({type(exc).__name__}: {exc}); expected arrays keyed by input name") from None


def _json_feed(ref: ShardRef, feeds: list[dict]) -> dict[str, np.ndarray]:
    if ref.index >= len(feeds):
        raise DataError(f"shard {ref.name}: {ref.path} holds only {len(feeds)} feed dicts")
    return {k: np.asarray(v) for k, v in feeds[ref.index].items()}


def _npz_arrays(ref: ShardRef, blob: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise DataError(f"shard {ref.name} is not a readable .npz file ({type(exc).__name__}: {exc}); expected arrays keyed by input name") from None


def read_shard(ref: ShardRef) -> tuple[dict[str, np.ndarray], str]:
    """A shard's arrays and the digest of exactly the data they were read from.

    The digest is hashed from the bytes as they are read (a URL's object is fetched once, then
    hashed and parsed from memory; a local ``.npz`` is hashed from the file), so a table measured
    on these arrays is recorded with the digest of its own data, never a digest taken earlier.
    When ``ref.sha256`` is set (the run hashed the shard at discovery) the two must agree.

    Returns:
        ``(arrays, digest)``: as :func:`load_shard` and :func:`shard_digest` give them.

    Raises:
        DataError: see :func:`load_shard`; or the shard changed since the run hashed it.
        EnvironmentFailure: an object store or the network failed.
    """
    if is_remote(ref.path):
        from fp16guard.io import remote

        if ref.index is not None:
            arrays = _json_feed(ref, _load_json_feeds(ref.path))
            digest = arrays_digest(arrays)
        else:
            blob = remote.read_bytes(ref.path, f"shard {ref.name}")
            digest = sha256_bytes(blob)  # the bytes parsed below, not an ETag
            arrays = _npz_arrays(ref, blob)
    else:
        arrays = load_shard(ref)
        digest = arrays_digest(arrays) if ref.index is not None else sha256_file(ref.path)
    if ref.sha256 is not None and digest != ref.sha256:
        raise DataError(
            f"shard {ref.name} changed while the run was using it (sha256 {ref.sha256[:12]}... when the run began, {digest[:12]}... now); "
            f"expected calibration and holdout data that stay unchanged during a run: run again"
        )
    return arrays, digest


def shard_digest(ref: ShardRef) -> str:
    """Content digest of a shard: the sha256 of the file's (or object's) bytes for ``.npz``; for
    a JSON feed dict, the sha256 of its arrays (names, dtypes, shapes, bytes), so adding feeds to
    a JSON file does not change the digest of the others. An object at a URL is streamed through
    sha256 (1 MiB reads): its bytes are hashed, never its ETag, which is no content digest for
    multipart uploads."""
    if ref.index is not None:
        return arrays_digest(load_shard(ref))
    if is_remote(ref.path):
        from fp16guard.io import remote

        return remote.sha256(ref.path, f"shard {ref.name}")
    return sha256_file(ref.path)


def shard_digests(refs: Sequence[ShardRef]) -> list[str]:
    """:func:`shard_digest` of each shard, in order; ``.npz`` objects at URLs several at a time
    (:data:`fp16guard.io.remote.DIGEST_THREADS`), since an object store's latency, not its
    bandwidth, bounds hashing many small shards one by one."""
    remote_npz = [i for i, r in enumerate(refs) if r.index is None and is_remote(r.path)]
    out: list[str | None] = [None] * len(refs)
    if remote_npz:
        from fp16guard.io import remote

        for i, digest in zip(remote_npz, remote.sha256_many([refs[i].path for i in remote_npz])):
            out[i] = digest
    return [d if d is not None else shard_digest(r) for d, r in zip(out, refs)]


def shard_location(ref: ShardRef) -> str:
    """Where a shard lives, for lineage and for telling shards apart: the absolute file path or
    the object's URL, plus ``#<index>`` for a JSON feed dict."""
    loc = ref.path if is_remote(ref.path) else str(Path(ref.path).resolve())
    return loc if ref.index is None else f"{loc}#{ref.index}"


def shard_bytes(ref: ShardRef) -> int:
    """Bytes of the file (or object: one HEAD request) holding ``ref``; 0 when unknown."""
    try:
        if is_remote(ref.path):
            from fp16guard.io import remote

            return remote.size(ref.path)
        return os.path.getsize(ref.path)
    except (OSError, DataError):
        return 0


def arrays_digest(feeds: dict[str, np.ndarray]) -> str:
    """sha256 over sorted names, dtypes, shapes and bytes of a feed dict."""
    h = hashlib.sha256()
    for name in sorted(feeds):
        arr = np.ascontiguousarray(feeds[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def peek_shard(ref: ShardRef) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Names, dtypes and shapes of a shard's arrays, reading only the ``.npy`` headers of a
    ``.npz`` (cheap even for large shards). JSON feed dicts are loaded whole.

    Raises:
        DataError: the file cannot be read as the format its suffix says.
    """
    if ref.index is not None:
        return {k: (v.dtype, v.shape) for k, v in load_shard(ref).items()}
    import zipfile

    out = {}
    try:
        with _open_npz(ref) as fh, zipfile.ZipFile(fh) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                with zf.open(member) as member_fh:
                    major, _ = np.lib.format.read_magic(member_fh)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(member_fh)
                out[member[: -len(".npy")]] = (np.dtype(dtype), tuple(shape))
    except (UserError, EnvironmentFailure):
        raise
    except Exception as exc:
        raise DataError(f"shard {ref.name} is not a readable .npz file ({type(exc).__name__}: {exc}); expected arrays keyed by input name") from None
    return out


@contextmanager
def _open_npz(ref: ShardRef):
    """The shard's file, opened for random access: a local file, or an object read in small
    ranges (:func:`fp16guard.io.remote.open_binary`), so its headers cost no full download."""
    if is_remote(ref.path):
        from fp16guard.io import remote

        with remote.open_binary(ref.path, f"shard {ref.name}") as fh:
            with remote.url_errors(f"shard {ref.name}"):
                yield fh
    else:
        with open(ref.path, "rb") as fh:
            yield fh


def header_samples(ref: ShardRef) -> int:
    """A shard's samples as its headers tell, without reading its arrays: the largest leading
    size (1 for a shard of scalars only)."""
    return max((shape[0] for _, shape in peek_shard(ref).values() if shape), default=1)

def batch_axes(specs: Sequence[InputSpec]) -> dict[str, int | None]:
    """The batch axis of every input, from the model's declared shapes alone.

    * The batch is the named (symbolic) dimension shared by the most inputs (a name counts only
      where it is the leading axis of some input or appears in two or more inputs); on a tie, the one
      that sits furthest to the left, then the first seen. Each input's batch axis is where that
      name first appears in its shape; an input without it (a rank-0 sample rate, a fixed-size
      table) has none and is fed whole with every slice.
    * With no named dimension at all, the leading axis is the batch of every input whose leading
      size is dynamic; inputs with a static leading size share it only if no leading size is
      dynamic and they all agree (a batch-1 model run on larger shards in slices); otherwise they
      have none.
    * An input of unknown rank gets axis 0 (decided again against the data: rank 0 has none).

    Returns:
        ``{input name: axis or None}``.
    """
    symbols: dict[str, list[int]] = {}
    for spec in specs:
        if not spec.shape:
            continue
        seen: set[str] = set()
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim and dim not in seen:
                seen.add(dim)
                symbols.setdefault(dim, []).append(axis)
    # A named dimension is a batch candidate only where it leads some input or is shared by two
    # or more inputs: a lone symbolic width ([1, 1, 64, 'image_width']) is not a batch axis.
    symbols = {name: where for name, where in symbols.items() if 0 in where or len(where) > 1}
    axes: dict[str, int | None] = {}
    if symbols:
        first = list(symbols)
        best = min(symbols, key=lambda name: (-len(symbols[name]), min(symbols[name]), first.index(name)))
        for spec in specs:
            if spec.shape is None:
                axes[spec.name] = 0
            else:
                axes[spec.name] = list(spec.shape).index(best) if best in spec.shape else None
        return axes
    leads = [spec.shape[0] for spec in specs if spec.shape]
    dynamic = any(not isinstance(d, int) or d <= 0 for d in leads)
    static_agree = not dynamic and len(set(leads)) <= 1
    for spec in specs:
        if spec.shape is None:
            axes[spec.name] = 0
        elif not spec.shape:
            axes[spec.name] = None
        else:
            lead = spec.shape[0]
            is_dynamic = not isinstance(lead, int) or lead <= 0
            axes[spec.name] = 0 if (is_dynamic or static_agree) else None
    return axes


def _batch_symbol(specs: Sequence[InputSpec], axes: Mapping[str, int | None]) -> str:
    for spec in specs:
        axis = axes.get(spec.name)
        if axis is not None and spec.shape and axis < len(spec.shape) and isinstance(spec.shape[axis], str):
            return f"'{spec.shape[axis]}'"
    return "the leading dimension"


def check_layout(ref: ShardRef, layout: dict[str, tuple[np.dtype, tuple[int, ...]]], specs: Sequence[InputSpec]) -> int:
    """Check a shard's array names, dtypes and shapes against the model's inputs.

    Args:
        ref: the shard (for messages).
        layout: ``{name: (dtype, shape)}`` as from :func:`peek_shard`.
        specs: the model's inputs.

    Returns:
        The shard's number of samples: the size of the batch axis (:func:`batch_axes`); 1 when
        no input has one (the shard is one inference).

    Raises:
        DataError: an input is missing, has the wrong rank or a static dimension that differs
            (every axis but the batch axis), has an incompatible dtype (integer or boolean data for a float input included), the inputs disagree on
            the batch size, or the batch is empty.
    """
    axes = batch_axes(specs)
    batch: int | None = None
    for spec in specs:
        if spec.name not in layout:
            expected = ", ".join(s.describe() for s in specs)  # only for the message: it cost ~4% of a small model's statistics pass
            raise DataError(f"shard {ref.name} has no input '{spec.name}' (it has {sorted(layout)}); the model expects inputs {expected}")
        dtype, shape = layout[spec.name]
        axis = axes[spec.name] if len(shape) > 0 else None
        if spec.shape is not None and len(shape) != len(spec.shape):
            raise DataError(f"shard {ref.name}: input '{spec.name}' has rank {len(shape)} (shape {list(shape)}); the model expects {spec.describe()}")
        if spec.shape is not None:
            for i, (got, want) in enumerate(zip(shape, spec.shape)):
                # The batch axis may be larger than a static batch: the shard runs in slices of it.
                if i != axis and isinstance(want, int) and want > 0 and got != want:
                    raise DataError(f"shard {ref.name}: input '{spec.name}' has shape {list(shape)}; the model expects {spec.describe()} (axis {i} must be {want})")
        if not _castable(np.dtype(dtype), spec.dtype):
            hint = ""
            if spec.dtype.kind == "f" and np.dtype(dtype).kind in "biu":
                # Integer data for a float input is almost always unconverted pixels or token ids:
                # casting it silently would calibrate and verify on the wrong value range.
                hint = f"; integer data for a float input is refused (unscaled pixels or ids?): convert it to float yourself, e.g. x.astype(np.{spec.dtype}) / 255"
            raise DataError(f"shard {ref.name}: input '{spec.name}' has dtype {dtype}; the model expects {spec.describe()}{hint}")
        if axis is None:
            continue
        if shape[axis] == 0:
            raise DataError(f"shard {ref.name}: input '{spec.name}' holds no samples (shape {list(shape)}); expected at least 1 along its batch axis {axis}")
        if batch is not None and shape[axis] != batch:
            raise DataError(
                f"shard {ref.name}: input '{spec.name}' has {shape[axis]} samples on its batch axis {axis} but other inputs have {batch}; "
                f"expected the same batch size on every input's batch axis ({_batch_symbol(specs, axes)})"
            )
        batch = shape[axis]
    return 1 if batch is None else batch


class Feeds(dict):
    """Prepared feeds (``{input name: array}``) that know each input's batch axis.

    A plain dict as far as runners are concerned; :func:`batch_count`, :func:`iter_slices` and
    :func:`head` read :attr:`axes` (a plain dict falls back to axis 0 for every array).

    Attributes:
        axes: ``{input name: batch axis or None}`` (None: fed whole with every slice).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], axes: Mapping[str, int | None]):
        super().__init__(arrays)
        self.axes = dict(axes)


def prepare_feeds(ref: ShardRef, feeds: dict[str, np.ndarray], specs: Sequence[InputSpec]) -> Feeds:
    """Check a loaded shard against the model's inputs and return the feeds to run.

    Float arrays are cast to the input's float dtype (float64 data to a float32 input), integer
    arrays to its integer dtype; integer data for a float input is refused (:func:`check_layout`).
    Arrays that are not model inputs are dropped. The result carries each input's batch axis.

    Raises:
        DataError: see :func:`check_layout`.
        NonFiniteError: a float input holds NaN or inf (names the shard and input).
    """
    check_layout(ref, {k: (np.asarray(v).dtype, np.shape(v)) for k, v in feeds.items()}, specs)
    axes = batch_axes(specs)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = np.asarray(feeds[spec.name])
        if arr.dtype != spec.dtype:
            arr = arr.astype(spec.dtype)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise NonFiniteError(f"shard {ref.name}: input '{spec.name}' holds {bad} NaN/inf values; expected finite data")
        out[spec.name] = arr
        if arr.ndim == 0:
            axes[spec.name] = None
    return Feeds(out, {name: axes.get(name) for name in out})


def _castable(have: np.dtype, want: np.dtype) -> bool:
    """Whether data of dtype ``have`` may be fed to an input of dtype ``want`` (after a cast).

    Float data of another width (float64, float16) is cast to a float input; integer or boolean
    data is not (see :func:`check_layout`).
    """
    if have == want:
        return True
    if want.kind == "f":
        return have.kind == "f"
    if want.kind in "iu":
        return have.kind in "iu"
    if want.kind == "b":
        return have.kind in "biu"
    return False


def _axes(feeds: Mapping[str, np.ndarray]) -> dict[str, int | None]:
    if isinstance(feeds, Feeds):
        return feeds.axes
    return {k: (0 if np.ndim(v) else None) for k, v in feeds.items()}


def batch_count(feeds: Mapping[str, np.ndarray]) -> int:
    """Number of samples in prepared feeds: the size of the batch axis; 1 when no input has one
    (the shard is one inference), 0 for no feeds."""
    if not feeds:
        return 0
    for name, axis in _axes(feeds).items():
        if axis is not None:
            return int(np.shape(feeds[name])[axis])
    return 1


def slice_size(specs: Sequence[InputSpec], samples: int, requested: int | None) -> int:
    """How many samples to run per inference call.

    The model's static batch dimension (a static size on an input's batch axis) wins: a shard of
    8 samples on a batch-1 model runs as 8 slices; else ``requested`` (``--batch-size``); else the
    whole shard in one call.

    Raises:
        DataError: the shard's size is not a multiple of the model's static batch.
    """
    axes = batch_axes(specs)
    static = set()
    for s in specs:
        axis = axes.get(s.name)
        if axis is not None and s.shape and axis < len(s.shape) and isinstance(s.shape[axis], int) and s.shape[axis] > 0:
            static.add(s.shape[axis])
    if static:
        size = min(static)
        if samples % size:
            raise DataError(f"shard has {samples} samples, not a multiple of the model's static batch size {size}")
        return size
    return max(1, min(requested or samples, samples))


def _take(arr: np.ndarray, axis: int | None, start: int, stop: int) -> np.ndarray:
    if axis is None:
        return arr
    index = [slice(None)] * arr.ndim
    index[axis] = slice(start, stop)
    return arr[tuple(index)]


def iter_slices(feeds: Mapping[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Yield consecutive slices of ``size`` samples along each input's batch axis (views, no
    copies); inputs without a batch axis come whole with every slice."""
    axes = _axes(feeds)
    total = batch_count(feeds)
    for start in range(0, total, size):
        yield Feeds({k: _take(v, axes.get(k), start, start + size) for k, v in feeds.items()}, axes)


def head(feeds: Mapping[str, np.ndarray], samples: int) -> dict[str, np.ndarray]:
    """The first ``samples`` samples of prepared feeds, along each input's batch axis (views)."""
    axes = _axes(feeds)
    return Feeds({k: _take(v, axes.get(k), 0, samples) for k, v in feeds.items()}, axes)


@contextmanager
def shard_context(ref: ShardRef) -> Iterator[None]:
    """Prefix a DataError raised in the block with the shard's name (if it lacks it), so a
    failure deep in a runner still says which shard it came from."""
    try:
        yield
    except DataError as exc:
        if ref.name in str(exc):
            raise
        raise type(exc)(f"shard {ref.name}: {exc}") from None
