"""Tasks that turn user-given locations into content-addressed references."""

from __future__ import annotations

from prefect import task

from dataclasses import replace

from fp16guard.io.shards import ShardRef, discover_shards, shard_digests
from fp16guard.io.shards import shard_location as _location
from fp16guard.io.model import input_specs, load_graph, model_digest


@task(name="fingerprint-model")
def fingerprint_model(model_path: str) -> dict:
    """Check the model loads and hash it.

    Returns:
        ``{"location", "sha256", "bytes", "inputs"}`` where ``inputs`` describes the graph inputs.

    Raises:
        ModelError: the model is missing or invalid (the run stops before any artifact).
    """
    from pathlib import Path

    model = load_graph(model_path)
    specs = [s.describe() for s in input_specs(model)]
    return {
        "location": str(Path(model_path).resolve()),
        "sha256": model_digest(model_path),
        "bytes": Path(model_path).stat().st_size,
        "inputs": specs,
    }


@task(name="discover-shards")
def discover(paths: list[str], role: str) -> list[dict]:
    """Expand calibration or holdout locations (folders, files, globs, fsspec URLs) into shards
    with content digests.

    Each digest is the sha256 of the shard's bytes (:func:`fp16guard.io.shards.shard_digest`;
    an object at a URL is read and hashed here, several at a time), and each ``ShardRef`` carries
    it (``sha256``), so the task that later reads the shard, on any worker, refuses data that
    changed since: a result is never cached under the digest of other bytes.

    Returns:
        One ``{"shard": ShardRef, "sha256": str}`` per shard, in order.

    Raises:
        DataError: a location is missing or the set is empty.
        EnvironmentFailure: an object store or the network failed.
    """
    refs = discover_shards(paths, role)
    return [{"shard": replace(ref, sha256=digest), "sha256": digest} for ref, digest in zip(refs, shard_digests(refs))]


def shard_location(ref: ShardRef) -> str:
    """Where a shard lives, for lineage: the absolute file path or the object's URL, plus
    ``#<index>`` for a JSON feed dict (:func:`fp16guard.io.shards.shard_location`)."""
    return _location(ref)


def holdout_overlap(calib: list[dict], holdout: list[dict]):
    """Holdout shards that are calibration shards too, from discovered shards (:func:`discover`):
    the same place (file and feed index) or the same content digest, as
    :func:`fp16guard.preflight.check_independent` judges them, without reading the files again.

    Returns:
        :class:`fp16guard.preflight.Overlap` (empty when the holdout is independent).
    """
    from fp16guard.preflight import Overlap

    by_place = {shard_location(c["shard"]): c["shard"].name for c in calib}
    by_digest: dict[str, str] = {}
    for c in calib:
        by_digest.setdefault(c["sha256"], c["shard"].name)
    pairs = []
    for h in holdout:
        same = by_place.get(shard_location(h["shard"]))
        if same is not None:
            pairs.append((h["shard"].name, same, "same file"))
        elif h["sha256"] in by_digest:
            pairs.append((h["shard"].name, by_digest[h["sha256"]], "same content"))
    return Overlap(tuple(pairs))


def calib_records(shards: list[dict]) -> list[dict]:
    """``{"shard", "location", "sha256"}`` per discovered shard, for lineage records."""
    return [{"shard": s["shard"].name, "location": shard_location(s["shard"]), "sha256": s["sha256"]} for s in shards]
