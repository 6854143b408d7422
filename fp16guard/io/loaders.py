"""Data sources other than ``.npz`` folders: Polygraphy data-loader scripts, Python feeds and
image folders, materialised into content-addressed ``.npz`` shards.

Every source ends as a folder of ordinary shards, so everything downstream (checks, statistics,
caching, lineage, the holdout split) is unchanged:

* :class:`LoaderScript` -- Polygraphy's ``--data-loader-script`` convention: ``FILE.py:FUNC``
  (``FILE.py`` alone means ``load_data``); ``FUNC()`` returns an iterable (a list, a generator)
  of feed dicts ``{input name: numpy array}``, each one inference (its batch included).
* a callable returning such an iterable, or the iterable itself (Python API only);
* :class:`ImageFolder` -- a folder of images and a declared preprocessing (size, layout,
  channels, scale, mean, std). PNG, PPM/PGM and BMP are read with numpy alone; other formats
  (JPEG, WebP, TIFF) need Pillow (``pip install pillow``).

**Materialisation.** Feeds are checked one by one against the model's inputs as they come (a
non-dict, an array that is not a model input, a missing input, a wrong rank, dtype or static
size, NaN/inf: one line naming the feed and what was expected) and cast as
:func:`fp16guard.io.shards.prepare_feeds` casts them. Consecutive feeds whose arrays share
dtypes and shapes (all but the batch axis; inputs without a batch axis must be equal) are
concatenated along the batch axis into shards of ``shard_samples`` samples (default
:data:`SHARD_SAMPLES`). Each shard is written as ``NNNNN-<sha256 of its arrays, 16 hex>.npz``
with fixed zip timestamps, so the same data gives the same bytes (and the same cache keys); the
folder is named ``<kind>-<sha256 of its file names, 16 hex>``. Shards are staged in a temporary
folder and moved under ``root`` only when every source of the call has been read without error,
so a refused source leaves nothing there; a folder that already exists is reused as is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from fp16guard.errors import ConfigError, DataError

__all__ = [
    "SHARD_SAMPLES",
    "IMAGE_SUFFIXES",
    "LoaderScript",
    "ImageFolder",
    "parse_preprocess",
    "read_image",
    "is_source",
    "materialise",
    "resolve_sources",
    "default_data_root",
]

#: Samples per materialised shard unless told otherwise (consecutive feeds of the same shapes).
SHARD_SAMPLES = 32

#: Image files an :class:`ImageFolder` picks up (others, e.g. ``labels.txt``, are ignored).
IMAGE_SUFFIXES = (".png", ".ppm", ".pgm", ".pnm", ".bmp", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".gif")
_NUMPY_SUFFIXES = (".png", ".ppm", ".pgm", ".pnm", ".bmp")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class LoaderScript:
    """A Polygraphy-style data-loader script: ``FILE.py:FUNC`` or ``FILE.py`` (``load_data``).

    ``FUNC()`` is called with no arguments and must return an iterable of feed dicts
    ``{input name: numpy array}`` (each one inference, its batch dimension included).
    """

    path: str
    function: str = "load_data"

    @classmethod
    def parse(cls, text: str | os.PathLike) -> "LoaderScript":
        """``"loader.py:make_feeds"`` -> ``LoaderScript("loader.py", "make_feeds")``.

        Raises:
            ConfigError: the text is not ``FILE.py`` or ``FILE.py:FUNC``.
        """
        text = os.fspath(text)
        path, sep, func = text.rpartition(":")
        if not sep or not func.isidentifier() or not path:
            path, func = text, "load_data"
        if not path.endswith(".py"):
            raise ConfigError(f"data loader script {text!r} is not accepted; expected FILE.py or FILE.py:FUNCTION, e.g. loader.py:load_data")
        return cls(path, func)

    @property
    def label(self) -> str:
        return f"data loader {self.path}:{self.function}"

    def feeds(self) -> Iterable[Any]:
        """Import the script and call its function.

        Raises:
            DataError: the script does not exist, fails to import, lacks the function, or the
                function raises or returns something that is not iterable.
        """
        path = Path(self.path)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise DataError(f"{self.label}: {self.path} {what}; expected a Python file defining {self.function}() that returns an iterable of feed dicts")
        name = f"_fp16guard_loader_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise DataError(f"{self.label}: {self.path} cannot be imported; expected a Python source file")
        module = importlib.util.module_from_spec(spec)
        # As Polygraphy does: the script's folder is importable while it loads (its helpers).
        sys.path.insert(0, str(path.resolve().parent))
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise DataError(f"{self.label}: importing {self.path} raised {_exc_text(exc)}; expected a script that imports cleanly") from None
        finally:
            try:
                sys.path.remove(str(path.resolve().parent))
            except ValueError:
                pass
        func = getattr(module, self.function, None)
        if func is None or not callable(func):
            defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == name)
            have = f" (it defines {', '.join(defined)})" if defined else ""
            raise DataError(f"{self.label}: {self.path} has no function {self.function!r}{have}; expected FILE.py:FUNCTION naming a function that returns feed dicts")
        return _call(func, self.label)


@dataclass(frozen=True)
class ImageFolder:
    """A folder of images (searched recursively, in sorted path order) and how to turn each into
    one sample of a vision model's input.

    Per image: decode to ``channels``; resize to ``size`` (height, width) by bilinear
    interpolation (half-pixel centres, no antialiasing), stretched, or with ``resize="crop"``
    scaled to cover it and centre-cropped; then ``(pixel * scale - mean) / std`` per channel, in
    the model input's float dtype, laid out as ``layout`` with a batch dimension of 1.

    Attributes:
        path: the folder.
        size: ``(height, width)``; None: the model input's static height and width, else each
            image's own size (images of one size are grouped into shards).
        layout: ``"NCHW"`` (default) or ``"NHWC"``.
        channels: ``"RGB"`` (default), ``"BGR"`` or ``"L"`` (one gray channel).
        scale: multiplies the 0-255 pixel values first (default 1/255).
        mean, std: one value, or one per channel (defaults 0 and 1).
        resize: ``"stretch"`` (default) or ``"crop"``.
        input: the model input to feed; None: the model's only input.
    """

    path: str
    size: tuple[int, int] | None = None
    layout: str = "NCHW"
    channels: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "stretch"
    input: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))
        if isinstance(self.size, int):
            object.__setattr__(self, "size", (self.size, self.size))
        object.__setattr__(self, "layout", str(self.layout).upper())
        object.__setattr__(self, "channels", str(self.channels).upper())
        object.__setattr__(self, "mean", tuple(float(m) for m in np.atleast_1d(self.mean)))
        object.__setattr__(self, "std", tuple(float(s) for s in np.atleast_1d(self.std)))
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"image layout {self.layout!r} is not accepted; expected NCHW or NHWC")
        if self.channels not in ("RGB", "BGR", "L"):
            raise ConfigError(f"image channels {self.channels!r} is not accepted; expected RGB, BGR or L")
        if self.resize not in ("stretch", "crop"):
            raise ConfigError(f"image resize {self.resize!r} is not accepted; expected stretch or crop")
        if self.size is not None and (len(self.size) != 2 or any(int(s) < 1 for s in self.size)):
            raise ConfigError(f"image size {self.size!r} is not accepted; expected HEIGHTxWIDTH of positive integers, e.g. 224x224")
        nc = 1 if self.channels == "L" else 3
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, nc):
                raise ConfigError(f"image {name} has {len(values)} values; expected 1 or {nc} (one per channel of {self.channels})")
        if any(s == 0 for s in self.std):
            raise ConfigError("image std holds a 0; expected non-zero values")

    @classmethod
    def from_spec(cls, path: str | os.PathLike, spec: str | None) -> "ImageFolder":
        """An image folder with preprocessing from ``--preprocess`` text (:func:`parse_preprocess`)."""
        return cls(os.fspath(path), **parse_preprocess(spec or ""))

    @property
    def label(self) -> str:
        return f"image folder {self.path}"

    def files(self) -> list[Path]:
        """The image files, sorted.

        Raises:
            DataError: the folder does not exist or holds no image file.
        """
        root = Path(self.path)
        if not root.is_dir():
            what = "is a file" if root.exists() else "does not exist"
            raise DataError(f"{self.label} {what}; expected a folder of images ({', '.join(s[1:] for s in IMAGE_SUFFIXES[:5])}, ...)")
        found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{self.label} holds no image file; expected .png, .ppm, .pgm or .bmp files (JPEG and others with Pillow installed)")
        return found

    def feeds_for(self, specs: Sequence) -> Iterator[dict[str, np.ndarray]]:
        """One feed dict per image, for a model with inputs ``specs``.

        Raises:
            ConfigError: no input can be chosen, or the chosen input is not an image tensor.
            DataError: an image cannot be read.
        """
        spec = self._input(specs)
        size = self.size
        h_axis, w_axis = (2, 3) if self.layout == "NCHW" else (1, 2)
        if size is None and spec.shape is not None:
            h, w = spec.shape[h_axis], spec.shape[w_axis]
            if isinstance(h, int) and h > 0 and isinstance(w, int) and w > 0:
                size = (h, w)
        c_axis = 1 if self.layout == "NCHW" else 3
        nc = 1 if self.channels == "L" else 3
        if spec.shape is not None and isinstance(spec.shape[c_axis], int) and spec.shape[c_axis] > 0 and spec.shape[c_axis] != nc:
            raise ConfigError(
                f"{self.label}: input '{spec.name}' {spec.describe()} has {spec.shape[c_axis]} channels on axis {c_axis} ({self.layout}) but channels={self.channels} "
                f"gives {nc}; expected channels=L for 1, RGB or BGR for 3, or the other layout"
            )
        dtype = spec.dtype if spec.dtype.kind == "f" else np.dtype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        for path in self.files():
            pixels = _to_channels(read_image(path), self.channels)
            if size is not None:
                pixels = _resize(pixels, size, self.resize)
            x = (pixels.astype(np.float64) * self.scale - mean) / std
            if self.layout == "NCHW":
                x = x.transpose(2, 0, 1)
            yield {spec.name: np.ascontiguousarray(x[None].astype(dtype))}

    def _input(self, specs: Sequence):
        names = [s.name for s in specs]
        if self.input is not None:
            chosen = [s for s in specs if s.name == self.input]
            if not chosen:
                raise ConfigError(f"{self.label}: input={self.input!r} is not an input of the model; expected one of {', '.join(names)}")
        elif len(specs) != 1:
            raise ConfigError(f"{self.label}: the model has {len(specs)} inputs ({', '.join(names)}); expected input=NAME in the preprocessing to say which one the images feed")
        else:
            chosen = list(specs)
        others = [s.name for s in specs if s.name != chosen[0].name]
        if others:
            raise ConfigError(f"{self.label}: the model also has input(s) {', '.join(others)} that images cannot feed; expected a model with one image input, or a data loader script")
        spec = chosen[0]
        if spec.shape is not None and len(spec.shape) != 4:
            raise ConfigError(f"{self.label}: input {spec.describe()} has rank {len(spec.shape)}; expected a rank-4 image input ({self.layout})")
        if spec.dtype.kind != "f":
            raise ConfigError(f"{self.label}: input {spec.describe()} is not a float tensor; expected a float image input")
        return spec


_PREPROCESS_KEYS = ("size", "resize", "layout", "channels", "scale", "mean", "std", "input")


def parse_preprocess(text: str) -> dict[str, Any]:
    """``--preprocess`` text as :class:`ImageFolder` keyword arguments.

    Comma-separated ``KEY=VALUE`` pairs; a list value continues over the commas that follow it:
    ``size=224x224,layout=NCHW,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225``.
    Keys: ``size`` (``HxW`` or one number for a square), ``resize`` (stretch, crop), ``layout``
    (NCHW, NHWC), ``channels`` (RGB, BGR, L), ``scale`` (a number or a fraction such as 1/255),
    ``mean``, ``std`` (one value or one per channel), ``input`` (the model input).

    Raises:
        ConfigError: an unknown key, a token that is not KEY=VALUE, or a malformed value.
    """
    pairs: list[list[str]] = []
    for token in [t.strip() for t in str(text).split(",") if t.strip()]:
        key, sep, value = token.partition("=")
        if sep:
            pairs.append([key.strip().lower(), value.strip()])
        elif pairs and pairs[-1][0] in ("mean", "std"):
            pairs[-1][1] += "," + token
        else:
            raise ConfigError(f"--preprocess {text!r}: {token!r} is not KEY=VALUE; expected e.g. size=224x224,layout=NCHW,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225")
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key not in _PREPROCESS_KEYS:
            raise ConfigError(f"--preprocess {text!r}: unknown key {key!r}; expected keys {', '.join(_PREPROCESS_KEYS)}")
        try:
            if key == "size":
                parts = value.lower().split("x")
                if len(parts) not in (1, 2):
                    raise ValueError
                h, w = int(parts[0]), int(parts[-1])
                out["size"] = (h, w)
            elif key == "scale":
                num, _, den = value.partition("/")
                out["scale"] = float(num) / float(den) if den else float(num)
            elif key in ("mean", "std"):
                out[key] = tuple(float(v) for v in value.split(","))
            elif key == "resize":
                out[key] = value.lower()
            else:
                out[key] = value
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"--preprocess {text!r}: {key}={value!r} is not accepted; expected e.g. size=224x224, scale=1/255, mean=0.485,0.456,0.406") from None
    return out


def is_source(value: Any) -> bool:
    """Whether ``value`` is a loader or image source rather than a path of shards."""
    if isinstance(value, (LoaderScript, ImageFolder)):
        return True
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return text.endswith(".py") or ".py:" in text
    return False


# ------------------------------------------------------------------------------- materialising


@dataclass
class _Staged:
    kind: str
    folder: Path
    digest: str
    shards: int = 0
    samples: int = 0
    files: list[str] = field(default_factory=list)


def resolve_sources(
    items: Sequence[tuple[str, Any]],
    specs: Sequence,
    root: str | os.PathLike,
    shard_samples: int = SHARD_SAMPLES,
) -> list[list[str] | None]:
    """Turn each ``(role, data)`` into shard locations, materialising loader and image sources.

    ``data`` may be: None; a path (``.npz``, folder, glob, Polygraphy JSON; a ``.py`` or
    ``FILE.py:FUNC`` string is a :class:`LoaderScript`); a :class:`LoaderScript` or
    :class:`ImageFolder`; a callable returning feed dicts; one feed dict; an iterable of feed
    dicts; or a list mixing paths and sources. Every source is read before anything is written
    under ``root``.

    Returns:
        Per item, the locations to give :func:`fp16guard.io.shards.discover_shards` (paths as
        given, then one folder per materialised source), or None for None.

    Raises:
        DataError, ConfigError: one line naming the source, the feed and what was expected.
    """
    if not isinstance(shard_samples, int) or isinstance(shard_samples, bool) or shard_samples < 1:
        raise ConfigError(f"shard_samples {shard_samples!r} is not accepted; expected a positive integer (samples per materialised shard)")
    staging = Path(tempfile.mkdtemp(prefix="fp16guard-data-"))
    try:
        plans: list[list[Any] | None] = []
        for role, data in items:
            if data is None:
                plans.append(None)
                continue
            entries: list[Any] = []
            for part in _parts(data, role):
                if isinstance(part, str):
                    entries.append(part)
                else:
                    entries.append(_stage(part, role, specs, staging, shard_samples))
            plans.append(entries)
        out: list[list[str] | None] = []
        for entries in plans:
            if entries is None:
                out.append(None)
                continue
            out.append([e if isinstance(e, str) else str(_publish(e, Path(root))) for e in entries])
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def materialise(data: Any, specs: Sequence, root: str | os.PathLike, role: str = "calibration", shard_samples: int = SHARD_SAMPLES) -> list[str]:
    """:func:`resolve_sources` for one role."""
    return resolve_sources([(role, data)], specs, root, shard_samples)[0] or []


def default_data_root(store_root: str) -> Path:
    """Where ``fp16guard run`` keeps materialised shards: ``<store>/.data`` for a local store
    (hidden from the store's model listing), else ``$XDG_CACHE_HOME/fp16guard/data`` (default
    ``~/.cache``) for an object store. Lineage records these paths, so they are kept.

    Args:
        store_root: the store's root, resolved (``fp16guard.store.runs.resolve_root``).
    """
    from fp16guard.io.urls import is_remote, local_path

    if not is_remote(store_root):
        return Path(local_path(store_root)) / ".data"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fp16guard" / "data"


def _parts(data: Any, role: str) -> list[Any]:
    """``data`` as a list of path strings and ``(kind, label, feeds)`` sources."""
    if isinstance(data, (str, os.PathLike)):
        return [_as_source(data)]
    if isinstance(data, (LoaderScript, ImageFolder)):
        return [data]
    if isinstance(data, Mapping):
        return [("feeds", f"{role} feed dict", [data])]
    if callable(data):
        label = f"{role} loader {getattr(data, '__qualname__', type(data).__name__)}()"
        return [("feeds", label, _LazyCall(data, label))]
    if isinstance(data, (list, tuple)):
        if data and all(isinstance(d, (str, os.PathLike, LoaderScript, ImageFolder)) for d in data):
            return [_as_source(d) for d in data]
        if not data:
            raise DataError(f"no {role} data given (an empty list); expected paths, a data loader, an ImageFolder or feed dicts")
        return [("feeds", f"{role} feeds", data)]
    if isinstance(data, Iterable):
        return [("feeds", f"{role} feeds", data)]
    raise ConfigError(f"{role} data is a {type(data).__name__}; expected a path, a list of paths, a callable or iterable of feed dicts, a LoaderScript or an ImageFolder")


def _as_source(value: Any) -> Any:
    if isinstance(value, (LoaderScript, ImageFolder)):
        return value
    text = os.fspath(value)
    return LoaderScript.parse(text) if is_source(text) else text


class _LazyCall:
    def __init__(self, func: Callable, label: str):
        self.func, self.label = func, label

    def __iter__(self):
        return iter(_call(self.func, self.label))


def _call(func: Callable, label: str) -> Iterable[Any]:
    try:
        result = func()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise DataError(f"{label} raised {_exc_text(exc)}; expected it to return an iterable of feed dicts") from None
    if isinstance(result, Mapping):
        return [result]  # one feed dict: Polygraphy would iterate its keys; take it as one feed
    if result is None or isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        raise DataError(f"{label} returned {type(result).__name__}; expected an iterable (list or generator) of feed dicts {{input name: numpy array}}")
    return result


def _exc_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _iter_feeds(source: Any, specs: Sequence) -> tuple[str, str, Iterator[Any]]:
    if isinstance(source, LoaderScript):
        return "loader", source.label, iter(source.feeds())
    if isinstance(source, ImageFolder):
        return "images", source.label, source.feeds_for(specs)
    kind, label, feeds = source
    return kind, label, iter(feeds)


def _stage(source: Any, role: str, specs: Sequence, staging: Path, shard_samples: int) -> _Staged:
    """Read, check and group one source's feeds into shards in a new folder under ``staging``."""
    from fp16guard.io.shards import ShardRef, arrays_digest, batch_count, prepare_feeds

    kind, label, feeds = _iter_feeds(source, specs)
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=staging))
    names = {s.name for s in specs}
    expected = ", ".join(s.describe() for s in specs)
    staged = _Staged(kind, folder, "")
    pending: list[Mapping[str, np.ndarray]] = []
    pending_key: Any = None
    pending_samples = 0

    def flush() -> None:
        nonlocal pending, pending_samples
        if not pending:
            return
        arrays = {}
        for name in pending[0]:
            axis = pending[0].axes.get(name)
            arrays[name] = pending[0][name] if axis is None or len(pending) == 1 else np.concatenate([p[name] for p in pending], axis=axis)
        digest = arrays_digest(arrays)
        file = f"{staged.shards:05d}-{digest[:16]}.npz"
        _write_npz(folder / file, arrays)
        staged.files.append(file)
        staged.shards += 1
        staged.samples += pending_samples
        pending, pending_samples = [], 0

    index = -1
    while True:
        index += 1
        try:
            feed = next(feeds)
        except StopIteration:
            break
        except (DataError, ConfigError):
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise DataError(f"{label} raised {_exc_text(exc)} while producing feed {index}; expected it to yield feed dicts {{input name: numpy array}}") from None
        where = f"{label} feed {index}"
        if not isinstance(feed, Mapping):
            raise DataError(f"{where} is a {type(feed).__name__}; expected a feed dict {{input name: numpy array}} with the model's inputs {expected}")
        unknown = sorted(str(k) for k in feed if k not in names)
        if unknown:
            raise DataError(f"{where} has array(s) {', '.join(repr(u) for u in unknown)} that are not inputs of the model; expected the model's inputs {expected}")
        arrays = {}
        for k, v in feed.items():
            try:
                arr = np.asarray(v)
            except Exception as exc:
                raise DataError(f"{where}: input '{k}' is a {type(v).__name__} that numpy cannot read ({_exc_text(exc)}); expected a numpy array") from None
            if arr.dtype == object:
                raise DataError(f"{where}: input '{k}' is a {type(v).__name__} of Python objects; expected a numeric numpy array")
            arrays[k] = arr
        prepared = prepare_feeds(ShardRef(where, ""), arrays, specs)
        key = tuple(
            (n, a.dtype.str, tuple(None if i == prepared.axes.get(n) else d for i, d in enumerate(a.shape)), None if prepared.axes.get(n) is not None else arrays_digest({n: a}))
            for n, a in sorted(prepared.items())
        )
        if all(prepared.axes.get(n) is None for n in prepared):
            key = (key, index)  # nothing to concatenate along: one feed, one shard
        if pending and key != pending_key:
            flush()
        pending.append(prepared)
        pending_key = key
        pending_samples += batch_count(prepared)
        if pending_samples >= shard_samples:
            flush()
    flush()
    if not staged.shards:
        raise DataError(f"{label} yielded no feed dicts; expected at least one {{input name: numpy array}} for the {role} set")
    staged.digest = hashlib.sha256("\n".join(staged.files).encode()).hexdigest()
    return staged


def _publish(staged: _Staged, root: Path) -> Path:
    """Move a staged folder to ``root/<kind>-<digest16>`` (reused when it exists)."""
    final = root / f"{staged.kind}-{staged.digest[:16]}"
    if final.is_dir() and sorted(p.name for p in final.glob("*.npz")) == sorted(staged.files):
        return final
    root.mkdir(parents=True, exist_ok=True)
    landing = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        for file in staged.files:
            shutil.move(str(staged.folder / file), str(landing / file))
        try:
            os.rename(landing, final)
        except OSError:
            if not final.is_dir():
                raise
            # Another writer published the same content meanwhile: the same bytes, keep theirs.
    finally:
        shutil.rmtree(landing, ignore_errors=True)
    return final


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An uncompressed ``.npz`` whose bytes depend on the arrays only (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arrays[name]), allow_pickle=False)


# ------------------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image to ``uint8 [H, W, C]`` (C = 1, 3 or 4; 16-bit samples scaled to 0-255).

    PNG (non-interlaced; gray, RGB, palette, with or without alpha; 8 or 16 bits), PPM/PGM
    (P2, P3, P5, P6) and BMP (8-bit palette, 24- and 32-bit, uncompressed) are read with numpy;
    other formats with Pillow when it is installed.

    Raises:
        DataError: the file cannot be read (names the file and what is supported).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"image {path} cannot be read ({_exc_text(exc)})") from None
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _read_png(data)
        if data[:2] in (b"P2", b"P3", b"P5", b"P6"):
            return _read_pnm(data)
        if data[:2] == b"BM":
            return _read_bmp(data)
    except _Unsupported as exc:
        pil = _read_with_pillow(path)
        if pil is not None:
            return pil
        raise DataError(f"image {path}: {exc}; expected it readable without Pillow, or Pillow installed (pip install pillow)") from None
    except Exception as exc:
        raise DataError(f"image {path} is not a readable {suffix.lstrip('.').upper() or 'image'} file ({_exc_text(exc)})") from None
    pil = _read_with_pillow(path)
    if pil is not None:
        return pil
    raise DataError(f"image {path} is {suffix.lstrip('.').upper() or 'of an unknown format'}, which needs Pillow: pip install pillow (PNG, PPM/PGM and BMP are read without it)")


class _Unsupported(Exception):
    pass


def _read_with_pillow(path: Path) -> np.ndarray | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as im:
            im = im.convert("RGBA" if "A" in im.getbands() else ("L" if im.mode in ("L", "I", "I;16", "1") else "RGB"))
            arr = np.asarray(im)
    except Exception as exc:
        raise DataError(f"image {path} cannot be decoded by Pillow ({_exc_text(exc)})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _read_png(data: bytes) -> np.ndarray:
    pos, idat, palette, trns = 8, [], None, None
    width = height = depth = ctype = interlace = None
    while pos + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif tag == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif tag == b"tRNS":
            trns = body
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if width is None:
        raise ValueError("no IHDR chunk")
    if interlace:
        raise _Unsupported("an interlaced PNG")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if channels is None or depth not in (8, 16) or (ctype == 3 and depth != 8):
        raise _Unsupported(f"a PNG of colour type {ctype} at {depth} bits")
    bpp = channels * depth // 8
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    if raw.size < height * (stride + 1):
        raise ValueError("truncated image data")
    rows = raw[: height * (stride + 1)].reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 1:
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1)
        elif kind == 2:
            cur = line + prev
        elif kind in (3, 4):
            cur = line.copy()
            p = prev.astype(np.int32)
            for i in range(stride):
                a = int(cur[i - bpp]) & 0xFF if i >= bpp else 0
                b = int(p[i])
                if kind == 3:
                    cur[i] += (a + b) >> 1
                else:
                    c = int(p[i - bpp]) if i >= bpp else 0
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    cur[i] += a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        else:
            raise ValueError(f"unknown PNG filter {kind}")
        out[y] = (cur & 0xFF).astype(np.uint8)
        prev = out[y]
    if depth == 16:
        img = (out.view(">u2").reshape(height, width, channels).astype(np.float64) / 257.0).round().astype(np.uint8)
    else:
        img = out.reshape(height, width, channels)
    if ctype == 3:
        if palette is None:
            raise ValueError("palette image without PLTE")
        img = palette[img[:, :, 0]]
    if ctype == 4:  # gray + alpha
        img = np.concatenate([np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1:]], axis=2)
    del trns
    return img


def _read_pnm(data: bytes) -> np.ndarray:
    magic = data[:2]
    tokens: list[bytes] = []
    pos = 2
    while len(tokens) < 3:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        tokens.append(data[start:pos])
    width, height, maxval = (int(t) for t in tokens)
    channels = 3 if magic in (b"P3", b"P6") else 1
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        pos += 1  # one whitespace byte after maxval
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        values = np.frombuffer(data, dtype, count=count, offset=pos).astype(np.float64)
    else:
        values = np.array(data[pos:].split()[:count], dtype=np.float64)
        if values.size < count:
            raise ValueError("truncated image data")
    img = np.round(values * (255.0 / maxval)).astype(np.uint8) if maxval != 255 else values.astype(np.uint8)
    return img.reshape(height, width, channels)


def _read_bmp(data: bytes) -> np.ndarray:
    offset = struct.unpack("<I", data[10:14])[0]
    header = struct.unpack("<I", data[14:18])[0]
    width, height, _, bits, compression = struct.unpack("<iiHHI", data[18:34])
    if compression not in (0, 3) or bits not in (8, 24, 32) or (compression == 3 and bits != 32):
        raise _Unsupported(f"a BMP of {bits} bits with compression {compression}")
    top_down = height < 0
    height = abs(height)
    stride = ((width * bits + 31) // 32) * 4
    rows = np.frombuffer(data, np.uint8, count=stride * height, offset=offset).reshape(height, stride)
    if bits == 8:
        colours = struct.unpack("<I", data[46:50])[0] or 256
        table = np.frombuffer(data, np.uint8, count=colours * 4, offset=14 + header).reshape(-1, 4)[:, 2::-1]
        img = table[rows[:, :width]]
    else:
        nb = bits // 8
        img = rows[:, : width * nb].reshape(height, width, nb)[:, :, 2::-1]  # BGR(A) -> RGB
    return np.ascontiguousarray(img if top_down else img[::-1])


def _to_channels(img: np.ndarray, channels: str) -> np.ndarray:
    """``uint8 [H, W, C]`` -> float ``[H, W, 3]`` (RGB or BGR) or ``[H, W, 1]`` (L); alpha dropped."""
    img = img.astype(np.float64)
    if img.shape[2] in (2, 4):
        img = img[:, :, :-1]
    if channels == "L":
        if img.shape[2] == 1:
            return img
        return (img[:, :, :3] @ np.array([0.299, 0.587, 0.114]))[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img[:, :, ::-1] if channels == "BGR" else img


def _resize(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Bilinear resize to ``size`` (height, width), half-pixel centres; ``crop``: cover, then centre-crop."""
    h, w = img.shape[:2]
    th, tw = int(size[0]), int(size[1])
    if mode == "crop":
        s = max(th / h, tw / w)
        ch, cw = max(th, round(h * s)), max(tw, round(w * s))
        img = _bilinear(img, ch, cw)
        top, left = (ch - th) // 2, (cw - tw) // 2
        return img[top : top + th, left : left + tw]
    return _bilinear(img, th, tw)


def _bilinear(img: np.ndarray, th: int, tw: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == (th, tw):
        return img

    def grid(n_in: int, n_out: int):
        x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, x - lo

    y0, y1, fy = grid(h, th)
    x0, x1, fx = grid(w, tw)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]
