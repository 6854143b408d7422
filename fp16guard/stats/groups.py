"""Shard groups: how many calibration shards one statistics task measures.

A task per shard costs a fixed overhead (a Prefect task run, a cache lookup, a session) that
dwarfs the inference of a one-sample shard: 300 one-sample shards took ~24x the statistics alone
(issue 18). A *group* of consecutive shards is measured by one task with one onnxruntime session;
each shard is still cached on its own content, so grouping never changes a result (the tables are
reduced in input order whatever the grouping; tests/test_shard_groups.py).

A group closes when it holds ``group_samples`` samples or ``group_bytes`` bytes of shard files,
whichever comes first, and never holds more than ``ceil(total / min_groups)`` samples, so a run
with N workers has at least N groups to share out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

__all__ = ["DEFAULT_GROUP_SAMPLES", "DEFAULT_GROUP_BYTES", "ShardSize", "shard_size", "shard_sizes", "plan_groups"]

#: Samples per group when none is set. Chosen from benchmarks/flow_scale.py (2-core machine,
#: 1-sample shards of a small CNN): the fixed cost of a group (task run, session, result transfer)
#: is ~0.3-0.5 s, so a group needs ~100+ samples of ~15-20 ms for the overhead to stay near 20% of
#: the inference; larger models amortise it sooner.
DEFAULT_GROUP_SAMPLES = 256
#: Bytes of shard files per group when none is set (bounds a group's work for large samples).
DEFAULT_GROUP_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ShardSize:
    """Samples and bytes of one shard (estimates are fine: they only size groups)."""

    samples: int
    bytes: int


def shard_size(ref, specs=None) -> ShardSize:
    """Samples and bytes of shard ``ref`` (:class:`fp16guard.io.shards.ShardRef`) without loading
    a ``.npz`` (array headers only). ``specs`` (the model's input specs) give the batch axis; without
    them, or when the shard does not fit the model (the statistics task reports that with its full
    message), the shard counts as one sample."""
    from fp16guard.errors import UserError
    from fp16guard.io import shards as data

    samples, size = 1, 0
    try:
        layout = data.peek_shard(ref)
    except UserError:
        return ShardSize(1, 0)
    if ref.index is None:
        size = data.shard_bytes(ref)  # a file's size, or an object's (one HEAD request)
    else:  # one feed dict of a JSON file: its arrays, not the whole file
        size = sum(int(math.prod(shape)) * dtype.itemsize for dtype, shape in layout.values())
    if specs is not None:
        try:
            samples = max(1, int(data.check_layout(ref, layout, specs)))
        except (UserError, ValueError, TypeError):
            samples = 1
    return ShardSize(samples, size)


def shard_sizes(refs: Sequence, specs=None) -> list[ShardSize]:
    """:func:`shard_size` of every shard, reading the headers of one local ``.npz`` file per
    distinct file size: a file of the same byte size as one already read is taken to hold as
    many samples (files of one calibration set that weigh the same hold the same shapes; were it
    wrong, a group would only end a little earlier or later, and results never depend on
    grouping). Reading every header cost ~0.25 ms per shard (3000 one-sample shards: ~0.75 s,
    over half a plain onnxruntime pass over them; 2-core VM, 2026-12-06). URLs and JSON feed
    dicts are read one by one, as :func:`shard_size` does."""
    from fp16guard.io.urls import is_remote

    samples_by_bytes: dict[int, int] = {}
    out: list[ShardSize] = []
    for ref in refs:
        if ref.index is not None or is_remote(ref.path) or not str(ref.path).lower().endswith(".npz"):
            out.append(shard_size(ref, specs))
            continue
        try:
            size = os.path.getsize(ref.path)
        except OSError:
            out.append(shard_size(ref, specs))  # the statistics task reports the missing file
            continue
        if size not in samples_by_bytes:
            measured = shard_size(ref, specs)
            if measured.bytes != size:  # unreadable headers: counted as one sample, not remembered
                out.append(measured)
                continue
            samples_by_bytes[size] = measured.samples
        out.append(ShardSize(samples_by_bytes[size], size))
    return out


def plan_groups(sizes: Sequence[ShardSize], group_samples: int | None = None, group_bytes: int | None = None, min_groups: int = 1) -> list[list[int]]:
    """Split shards (in order) into groups of consecutive indices.

    Args:
        sizes: one :class:`ShardSize` per shard, in input order.
        group_samples: close a group once it holds this many samples (default
            :data:`DEFAULT_GROUP_SAMPLES`).
        group_bytes: close a group once its shard files hold this many bytes (default
            :data:`DEFAULT_GROUP_BYTES`).
        min_groups: make at least this many groups when there are that many shards (one per
            worker), by capping a group at ``ceil(total samples / min_groups)`` samples.

    Returns:
        Lists of shard indices; concatenated, they are ``range(len(sizes))``. Never an empty group.
    """
    if group_samples is not None and group_samples < 1:
        raise ValueError(f"group_samples {group_samples} is not accepted; expected at least 1")
    if group_bytes is not None and group_bytes < 1:
        raise ValueError(f"group_bytes {group_bytes} is not accepted; expected at least 1")
    samples_cap = group_samples or DEFAULT_GROUP_SAMPLES
    bytes_cap = group_bytes or DEFAULT_GROUP_BYTES
    total = sum(s.samples for s in sizes)
    if min_groups > 1 and total:
        samples_cap = min(samples_cap, max(1, math.ceil(total / min_groups)))
    groups: list[list[int]] = []
    current: list[int] = []
    held_samples = held_bytes = 0
    for i, size in enumerate(sizes):
        current.append(i)
        held_samples += size.samples
        held_bytes += size.bytes
        if held_samples >= samples_cap or held_bytes >= bytes_cap:
            groups.append(current)
            current, held_samples, held_bytes = [], 0, 0
    if current:
        groups.append(current)
    return groups
