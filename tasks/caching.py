"""Cache policies for fp16guard tasks: keys from content digests, never from paths.

NOTES #11–12: Prefect's DEFAULT policy includes the run id (no reuse across runs), a ``Path``
argument is hashed by its string, and concurrent identical runs all execute unless the policy is
SERIALIZABLE with a lock manager. So every cached task here takes content digests as arguments,
excludes the path-like arguments from the key, adds the task's source, and locks on the key.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from pathlib import Path

from prefect.cache_policies import TASK_SOURCE, Inputs
from prefect.locking.filesystem import FileSystemLockManager


def cached(store_url: str, name: str, exclude: list[str]) -> dict:
    """Options for ``task.with_options(**cached(...))``: a content-keyed, locked cache whose
    records *and* result payloads live in the store, so every worker that shares the store shares
    the cache (Prefect otherwise keeps payloads in ``~/.prefect/storage`` of the host that
    computed them, and a record found elsewhere would point at nothing).

    Args:
        store_url: the store root (local folder or fsspec URL).
        name: cache name, e.g. "stats" (folder ``<store>/.cache/<name>/``).
        exclude: argument names left out of the key (paths, display names, tuning knobs that do
            not change the result such as the batch size).

    Returns:
        ``{"cache_policy", "result_storage", "persist_result"}``. The policy is keyed on the
        inputs minus ``exclude`` plus the task's source, and SERIALIZABLE: two runs that need the
        same key at once compute it once (lock files are local to a host, see
        :func:`lock_dir_for`).
    """
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    locks = lock_dir_for(store_url) / name
    locks.mkdir(parents=True, exist_ok=True)
    if _is_local(store_url):
        root = Path(store_url.removeprefix("file://")) / ".cache" / name
        (root / "records").mkdir(parents=True, exist_ok=True)
        records, results = LocalFileSystem(basepath=str(root / "records")), LocalFileSystem(basepath=str(root / "results"))
    else:
        base = f"{store_url.rstrip('/')}/.cache/{name}"
        options = _remote_options(store_url)
        records, results = RemoteFileSystem(basepath=f"{base}/records", settings=options), RemoteFileSystem(basepath=f"{base}/results", settings=options)
    # Prefect resolves result storage server-side, so the block is saved under a name derived
    # from its location (idempotent; the same store gives the same block on every worker).
    results = _saved(results, "fp16guard-cache-" + hashlib.sha256(f"{store_url}|{name}".encode()).hexdigest()[:16])
    policy = (Inputs(exclude=list(exclude)) + TASK_SOURCE).configure(
        key_storage=records,
        lock_manager=FileSystemLockManager(lock_files_directory=locks),
        isolation_level="SERIALIZABLE",
    )
    return {"cache_policy": policy, "result_storage": results, "persist_result": True}


def _saved(block, name: str):
    """Save ``block`` on the Prefect server under ``name`` (overwriting) and return it; if a
    concurrent run saved it first, load that one (same content by construction)."""
    for _ in range(3):
        try:
            block.save(name, overwrite=True)
            return block
        except Exception:  # a concurrent save of the same name: take the stored one
            try:
                return type(block).load(name)
            except Exception:
                continue
    block.save(name, overwrite=True)  # a last try raises the real error
    return block


def lock_dir_for(store_url: str) -> Path:
    """Where cache lock files live: ``<store>/.cache/locks`` for a local store; for a remote one,
    a per-user folder keyed by the URL (locks then serialise runs on one host only; two hosts may
    both compute a missing shard, and either result is correct)."""
    if _is_local(store_url):
        return Path(store_url.removeprefix("file://")) / ".cache" / "locks"
    return Path.home() / ".cache" / "fp16guard" / hashlib.sha256(store_url.encode()).hexdigest()[:16] / "locks"


def _is_local(store_url: str) -> bool:
    return "://" not in store_url or store_url.startswith("file://")


def _remote_options(store_url: str) -> dict:
    """fsspec options for the store's file system (the S3 endpoint, as the store itself uses)."""
    import os

    options: dict = {}
    endpoint = os.environ.get("FP16GUARD_S3_ENDPOINT_URL")
    if store_url.split("://", 1)[0] in ("s3", "s3a") and endpoint:
        options["endpoint_url"] = endpoint
    return options


def code_digest(*module_names: str) -> str:
    """sha256 over the source of library modules, so a change in how a result is computed
    invalidates its cache even when the task wrapper itself did not change."""
    h = hashlib.sha256()
    for name in sorted(module_names):
        module = importlib.import_module(name)
        h.update(name.encode())
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()
