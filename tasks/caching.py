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

from prefect.cache_policies import TASK_SOURCE, CachePolicy, Inputs
from prefect.locking.filesystem import FileSystemLockManager


def content_policy(cache_dir: str | Path, exclude: list[str]) -> CachePolicy:
    """A policy keyed on the task's inputs minus ``exclude``, plus its source code.

    Args:
        cache_dir: local folder holding cached results (``records/``) and lock files (``locks/``).
            Created on first use.
        exclude: argument names left out of the key (paths, display names, tuning knobs that do
            not change the result such as the batch size).

    Returns:
        A SERIALIZABLE policy: two runs that need the same key at once compute it once.
    """
    cache_dir = Path(cache_dir)
    (cache_dir / "records").mkdir(parents=True, exist_ok=True)
    (cache_dir / "locks").mkdir(parents=True, exist_ok=True)
    return (Inputs(exclude=list(exclude)) + TASK_SOURCE).configure(
        key_storage=str(cache_dir / "records"),
        lock_manager=FileSystemLockManager(lock_files_directory=cache_dir / "locks"),
        isolation_level="SERIALIZABLE",
    )


def code_digest(*module_names: str) -> str:
    """sha256 over the source of library modules, so a change in how a result is computed
    invalidates its cache even when the task wrapper itself did not change."""
    h = hashlib.sha256()
    for name in sorted(module_names):
        module = importlib.import_module(name)
        h.update(name.encode())
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()


def cache_dir_for(store_url: str) -> Path:
    """Where a store's task caches and locks live: ``<store>/.cache`` for a local store (shared by
    every run on that file system); for a remote store, a per-user folder keyed by the URL
    (cached shard statistics are then per host)."""
    if "://" not in store_url or store_url.startswith("file://"):
        return Path(store_url.removeprefix("file://")) / ".cache"
    return Path.home() / ".cache" / "fp16guard" / hashlib.sha256(store_url.encode()).hexdigest()[:16]
