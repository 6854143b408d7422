"""Optimisation profiles (min/opt/max per dynamic dimension) from the shapes the data really has.

An engine built for dynamic inputs accepts only shapes inside its profile, and is tuned for the
``opt`` shape. The shapes come from the calibration and holdout shards as they will be fed:
shards larger than the model's static batch or ``--batch-size`` run in slices, so the shapes are
those of the slices (:func:`fp16guard.io.shards.iter_slices`), not of whole shards.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence

from fp16guard.errors import DataError
from fp16guard.io.model import InputSpec


def derive_profile(specs: Sequence[InputSpec], observed: Iterable[Mapping[str, Sequence[int]]]) -> dict[str, dict[str, list[int]]]:
    """One optimisation profile covering every observed feed.

    For each input and each dimension: a static dimension is fixed; a dynamic one gets
    ``min``/``max`` = the smallest/largest size seen and ``opt`` = the size seen most often
    (ties go to the larger size, which TensorRT tunes for without penalising smaller ones).

    Args:
        specs: the model's graph inputs (:func:`fp16guard.io.model.input_specs`).
        observed: one mapping per inference call, input name -> shape fed.

    Returns:
        ``{input: {"min": [...], "opt": [...], "max": [...]}}`` in ``specs`` order.

    Raises:
        DataError: an input with a dynamic dimension was never observed, an observed shape has
            the wrong rank, or contradicts a static dimension.
    """
    seen: dict[str, list[tuple[int, ...]]] = {s.name: [] for s in specs}
    for feed in observed:
        for name, shape in feed.items():
            if name in seen:
                seen[name].append(tuple(int(d) for d in shape))
    profile: dict[str, dict[str, list[int]]] = {}
    for spec in specs:
        shapes = seen[spec.name]
        dynamic = spec.shape is None or any(not _static(d) for d in spec.shape)
        if not shapes:
            if dynamic:
                raise DataError(
                    f"input {spec.describe()} has dynamic dimensions but no calibration or holdout feed shows its shape; "
                    "expected at least one shard feeding it"
                )
            fixed = [int(d) for d in spec.shape]
            profile[spec.name] = {"min": fixed, "opt": fixed, "max": list(fixed)}
            continue
        rank = len(shapes[0]) if spec.shape is None else len(spec.shape)
        for shape in shapes:
            if len(shape) != rank:
                raise DataError(f"input {spec.describe()} was fed with shapes of rank {len(shape)} and {rank}; expected one rank")
            if spec.shape is not None:
                for axis, (got, want) in enumerate(zip(shape, spec.shape)):
                    if _static(want) and got != want:
                        raise DataError(f"input {spec.describe()} was fed shape {list(shape)}; axis {axis} must be {want}")
        lo, opt, hi = [], [], []
        for axis in range(rank):
            sizes = [s[axis] for s in shapes]
            counts = Counter(sizes)
            lo.append(min(sizes))
            hi.append(max(sizes))
            opt.append(max(counts, key=lambda size: (counts[size], size)))
        profile[spec.name] = {"min": lo, "opt": opt, "max": hi}
    return profile


def is_dynamic(specs: Sequence[InputSpec]) -> bool:
    """True when any input has a dynamic (symbolic or unknown) dimension or unknown rank."""
    return any(s.shape is None or any(not _static(d) for d in s.shape) for s in specs)


def check_within(profile: Mapping[str, Mapping[str, Sequence[int]]], feed: Mapping[str, Sequence[int]]) -> list[str]:
    """Inputs of ``feed`` (name -> shape) outside ``profile``; empty when the engine accepts it."""
    bad = []
    for name, shape in feed.items():
        p = profile.get(name)
        if p is None:
            continue
        if len(shape) != len(p["min"]) or any(not (lo <= d <= hi) for d, lo, hi in zip(shape, p["min"], p["max"])):
            bad.append(f"'{name}' shape {list(shape)} outside [{list(p['min'])}, {list(p['max'])}]")
    return bad


def slice_shapes(feeds: Mapping[str, "object"], size: int) -> list[dict[str, tuple[int, ...]]]:
    """Shapes of the slices :func:`fp16guard.io.shards.iter_slices` would feed (views: no arrays
    copied), along each input's batch axis (an RNN state [layers, N, H] is sliced on axis 1)."""
    from fp16guard.io.shards import iter_slices

    return [{k: tuple(v.shape) for k, v in part.items()} for part in iter_slices(feeds, size)]


def observed_shapes(refs, specs: Sequence[InputSpec], batch_size: int | None = None) -> list[dict[str, tuple[int, ...]]]:
    """Load each shard once (one at a time) and list the shapes its slices will have.

    Args:
        refs: :class:`fp16guard.io.shards.ShardRef` objects (calibration and holdout together).
        specs: the model's inputs; each shard is checked against them (:func:`fp16guard.io.shards.prepare_feeds`).
        batch_size: ``--batch-size``; the model's static batch wins (:func:`fp16guard.io.shards.slice_size`).

    Raises:
        DataError: a shard does not fit the model.
    """
    from fp16guard.io.shards import batch_count, load_shard, prepare_feeds, slice_size

    shapes: list[dict[str, tuple[int, ...]]] = []
    for ref in refs:
        feeds = prepare_feeds(ref, load_shard(ref), specs)
        size = slice_size(specs, batch_count(feeds), batch_size)
        shapes.extend(slice_shapes(feeds, size))
    return shapes


def _static(dim) -> bool:
    return isinstance(dim, int) and dim > 0
