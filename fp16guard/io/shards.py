"""Calibration and holdout data: finding shards, loading them, checking them against the model.

A *shard* is one unit of data and of caching: one ``.npz`` file (arrays keyed by input name,
leading batch dimension), or one feed dict of a Polygraphy JSON inputs file (the
list-of-feed-dicts format of ``polygraphy run --load-inputs``). Shards are loaded one at a time,
so memory does not grow with the number of shards.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fp16guard.errors import DataError, NonFiniteError
from fp16guard.io.hashing import sha256_file
from fp16guard.io.model import InputSpec


@dataclass(frozen=True)
class ShardRef:
    """Where one shard lives.

    Attributes:
        name: display name, unique within a data set: the file path as given, plus ``[i]`` for
            the i-th feed dict of a JSON file.
        path: the file holding it.
        index: position in a Polygraphy JSON list; None for ``.npz`` files.
    """

    name: str
    path: str
    index: int | None = None


def discover_shards(paths: Sequence[str | os.PathLike], role: str = "calibration") -> list[ShardRef]:
    """Expand user-given locations into an ordered list of shards.

    Each location may be a directory (its ``*.npz`` files, sorted), a glob pattern, a single
    ``.npz`` file, or a Polygraphy JSON inputs file (one shard per feed dict). Duplicates
    (the same file reached twice) are kept once, in first-seen order.

    Args:
        paths: the locations, as given on the command line.
        role: "calibration" or "holdout", used in error messages.

    Raises:
        DataError: a location does not exist or matches nothing, a file has an unsupported
            suffix, or the whole set is empty.
    """
    if not paths:
        raise DataError(f"no {role} data given; expected one or more .npz files, folders, globs or Polygraphy JSON files")
    files: list[Path] = []
    for raw in paths:
        text = str(raw)
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
        key = str(f.resolve())
        if key in seen:
            continue
        seen.add(key)
        suffix = f.suffix.lower()
        if suffix == ".npz":
            shards.append(ShardRef(str(f), str(f)))
        elif suffix == ".json":
            count = len(_load_json_feeds(f))
            shards.extend(ShardRef(f"{f}[{i}]", str(f), i) for i in range(count))
        else:
            raise DataError(f"{role} file {f} has suffix '{f.suffix}'; expected .npz or a Polygraphy JSON inputs file (.json)")
    if not shards:
        raise DataError(f"the {role} set is empty; expected at least one shard with at least one sample")
    return shards


def _load_json_feeds(path: Path) -> list[dict]:
    # Polygraphy's reader decodes its base64 .npy encoding; imported lazily (slow import).
    try:
        from polygraphy.json import load_json

        feeds = load_json(str(path))
    except Exception as exc:
        raise DataError(f"{path} is not a Polygraphy JSON inputs file ({type(exc).__name__}: {exc}); expected the output of 'polygraphy run --save-inputs'") from None
    if isinstance(feeds, dict):
        feeds = [feeds]
    if not isinstance(feeds, list) or not all(isinstance(f, dict) for f in feeds):
        raise DataError(f"{path} holds {type(feeds).__name__}; expected a list of feed dicts (input name -> array)")
    return feeds


def load_shard(ref: ShardRef) -> dict[str, np.ndarray]:
    """Load one shard's arrays into memory.

    Raises:
        DataError: the file cannot be read as the format its suffix says.
    """
    if ref.index is not None:
        feeds = _load_json_feeds(Path(ref.path))
        if ref.index >= len(feeds):
            raise DataError(f"shard {ref.name}: {ref.path} holds only {len(feeds)} feed dicts")
        return {k: np.asarray(v) for k, v in feeds[ref.index].items()}
    try:
        with np.load(ref.path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise DataError(f"shard {ref.name} is not a readable .npz file ({type(exc).__name__}: {exc}); expected arrays keyed by input name") from None


def shard_digest(ref: ShardRef) -> str:
    """Content digest of a shard: the file's sha256 for ``.npz``; for a JSON feed dict, the
    sha256 of its arrays (names, dtypes, shapes, bytes), so adding feeds to a JSON file does not
    change the digest of the others."""
    if ref.index is None:
        return sha256_file(ref.path)
    return arrays_digest(load_shard(ref))


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
        with zipfile.ZipFile(ref.path) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                with zf.open(member) as fh:
                    major, _ = np.lib.format.read_magic(fh)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(fh)
                out[member[: -len(".npy")]] = (np.dtype(dtype), tuple(shape))
    except Exception as exc:
        raise DataError(f"shard {ref.name} is not a readable .npz file ({type(exc).__name__}: {exc}); expected arrays keyed by input name") from None
    return out


def check_layout(ref: ShardRef, layout: dict[str, tuple[np.dtype, tuple[int, ...]]], specs: Sequence[InputSpec]) -> int:
    """Check a shard's array names, dtypes and shapes against the model's inputs.

    Args:
        ref: the shard (for messages).
        layout: ``{name: (dtype, shape)}`` as from :func:`peek_shard`.
        specs: the model's inputs.

    Returns:
        The shard's number of samples (leading dimension).

    Raises:
        DataError: an input is missing, has the wrong rank or a static dimension that differs,
            has an incompatible dtype, the inputs disagree on the batch size, or it is empty.
    """
    expected = ", ".join(s.describe() for s in specs)
    batch: int | None = None
    for spec in specs:
        if spec.name not in layout:
            raise DataError(f"shard {ref.name} has no input '{spec.name}' (it has {sorted(layout)}); the model expects inputs {expected}")
        dtype, shape = layout[spec.name]
        if spec.shape is not None and len(shape) != len(spec.shape):
            raise DataError(f"shard {ref.name}: input '{spec.name}' has rank {len(shape)} (shape {list(shape)}); the model expects {spec.describe()}")
        if spec.shape is not None:
            for axis, (got, want) in enumerate(zip(shape, spec.shape)):
                # Axis 0 is the batch: a larger shard is run in slices of the static batch.
                if axis > 0 and isinstance(want, int) and want > 0 and got != want:
                    raise DataError(f"shard {ref.name}: input '{spec.name}' has shape {list(shape)}; the model expects {spec.describe()} (axis {axis} must be {want})")
        if not _castable(np.dtype(dtype), spec.dtype):
            raise DataError(f"shard {ref.name}: input '{spec.name}' has dtype {dtype}; the model expects {spec.describe()}")
        if len(shape) == 0 or shape[0] == 0:
            raise DataError(f"shard {ref.name}: input '{spec.name}' holds no samples (shape {list(shape)}); expected a leading batch dimension of at least 1")
        if batch is not None and shape[0] != batch:
            raise DataError(f"shard {ref.name}: input '{spec.name}' has {shape[0]} samples but other inputs have {batch}; expected the same leading batch size")
        batch = shape[0]
    return batch or 0


def prepare_feeds(ref: ShardRef, feeds: dict[str, np.ndarray], specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """Check a loaded shard against the model's inputs and return the feeds to run.

    Float arrays are cast to the input's float dtype, integer arrays to its integer dtype; arrays
    that are not model inputs are dropped.

    Raises:
        DataError: see :func:`check_layout`.
        NonFiniteError: a float input holds NaN or inf (names the shard and input).
    """
    check_layout(ref, {k: (np.asarray(v).dtype, np.shape(v)) for k, v in feeds.items()}, specs)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = np.asarray(feeds[spec.name])
        if arr.dtype != spec.dtype:
            arr = arr.astype(spec.dtype)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise NonFiniteError(f"shard {ref.name}: input '{spec.name}' holds {bad} NaN/inf values; expected finite data")
        out[spec.name] = arr
    return out


def _castable(have: np.dtype, want: np.dtype) -> bool:
    """Whether data of dtype ``have`` may be fed to an input of dtype ``want`` (after a cast)."""
    if have == want:
        return True
    if want.kind == "f":
        return have.kind in "fiu"
    if want.kind in "iu":
        return have.kind in "iu"
    if want.kind == "b":
        return have.kind in "biu"
    return False


def batch_count(feeds: dict[str, np.ndarray]) -> int:
    """Number of samples in prepared feeds (size of the leading dimension)."""
    return next(iter(feeds.values())).shape[0] if feeds else 0


def slice_size(specs: Sequence[InputSpec], samples: int, requested: int | None) -> int:
    """How many samples to run per inference call.

    The model's static batch dimension wins (a shard of 8 samples on a batch-1 model runs as 8
    slices); else ``requested`` (``--batch-size``); else the whole shard in one call.

    Raises:
        DataError: the shard's size is not a multiple of the model's static batch.
    """
    static = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    if static:
        size = min(static)
        if samples % size:
            raise DataError(f"shard has {samples} samples, not a multiple of the model's static batch size {size}")
        return size
    return max(1, min(requested or samples, samples))


def iter_slices(feeds: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Yield consecutive slices of ``size`` samples along axis 0 (views, no copies)."""
    total = batch_count(feeds)
    for start in range(0, total, size):
        yield {k: v[start : start + size] for k, v in feeds.items()}


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
