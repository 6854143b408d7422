"""The per-shard statistics cache, read and written a group at a time (issue 18).

A group task measures hundreds of shards; each shard's result stays its own cache entry, keyed
exactly as :func:`tasks.stats.shard_stats_task`'s Prefect cache keys it (:meth:`TaskCache.key`:
model and shard content digests, the library code, the task's source) and stored in the same
format (a JSON payload in ``results/<key>``, a record naming the ``fp16guard-json`` serializer and
the payload's sha256 in ``records/<key>``), so one changed shard recomputes alone and either
side reads the other's entries.

What this module saves, measured on 300 one-sample shards (py-spy, 2-core VM, 2026-12-06): going
through Prefect's ``ResultStore`` once per shard (a lease lock taken and released, the record
read back to test existence, the payload read back to hash it, the storage paths resolved) cost
~10 ms per shard, several times the statistics themselves. Here, on a local store:

- **reads** take the record and its payload once each, check the serializer and the digest as
  :func:`tasks.caching._check_record` does (a refused entry is a miss, said once on stderr), and
  decode the payload with :class:`~tasks.caching.SafeSerializer` (data only, never code);
- **writes** hash the payload in memory, then write the payload and then its record, each to a
  temporary file renamed into place, so a reader sees a whole file or none; a record never points
  at a payload that is not there yet;
- **one lease lock per group** (on the sorted keys of the group's missing entries) replaces one
  per shard: two runs with the same missing shards compute them once; a per-shard lock left by
  :func:`~tasks.stats.shard_stats_task` is honoured (a live holder is waited for, a dead one's lock
  removed) before its shard is measured.

A remote store keeps the per-entry path of :class:`~tasks.caching.TaskCache` (its locks and
payloads live in the object store).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from fp16guard.io.urls import is_remote, local_path
from tasks.caching import DIGEST_FIELD, SafeSerializer, TaskCache, _check_record, _report

__all__ = ["ShardEntries", "entries_for"]

_memo: dict[tuple[str, str, int, str], "ShardEntries"] = {}
_memo_lock = threading.Lock()


def entries_for(store_url: str, name: str, task, exclude: list[str]) -> "ShardEntries":
    """The :class:`ShardEntries` of cache ``name`` of ``task`` in ``store_url``, made once per
    process (building a :class:`TaskCache` saves a storage block on the Prefect server: ~0.1-0.4 s,
    which every group task paid)."""
    from prefect.settings import PREFECT_API_URL

    # Per server too: the storage block the records name is saved on the server in use.
    memo_key = (store_url, name, id(task), str(PREFECT_API_URL.value()))
    with _memo_lock:
        found = _memo.get(memo_key)
        if found is None:
            found = _memo[memo_key] = ShardEntries(TaskCache(store_url, name, task, exclude), store_url, name)
        return found


class ShardEntries:
    """Bulk access to the entries of one :class:`TaskCache`.

    Args:
        cache: the task cache (keys, lock manager, Prefect result store for remote stores).
        store_url: its store root.
        name: its cache name (folder ``<store>/.cache/<name>``).
    """

    def __init__(self, cache: TaskCache, store_url: str, name: str) -> None:
        self.cache = cache
        self.local = not is_remote(store_url)
        self._serializer = SafeSerializer()
        if self.local:
            root = Path(local_path(store_url)) / ".cache" / name
            self.records, self.payloads = root / "records", root / "results"
            # The record Prefect writes for an entry (ResultRecordMetadata), as a template: only
            # the storage key and the digest differ from entry to entry.
            from prefect._internal.result_records import ResultRecordMetadata

            template = ResultRecordMetadata(storage_key="", serializer=self._serializer, storage_block_id=cache.store.result_storage_block_id)
            self._template = json.loads(template.dump_bytes())

    def key(self, inputs: dict[str, Any]) -> str:
        """The entry's key (:meth:`TaskCache.key`)."""
        return self.cache.key(inputs)

    # ------------------------------------------------------------------------------ reads
    def get(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` when the entry is present and sound, else ``(False, None)``; never
        waits on a lock (a missing entry is computed under :meth:`locked`)."""
        if not self.local:
            return self.cache.get(key)
        path = self.records / key
        try:
            content = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return False, None
        except OSError as exc:
            _report(f"fp16guard: cache entry {path} not used ({type(exc).__name__}: {exc}); recomputing")
            return False, None
        try:
            record = json.loads(content)
        except ValueError:
            record = None  # the check below says why it is refused
        if isinstance(record, dict) and (record.get("expiration") is not None or not _plain_name(record.get("storage_key"))):
            return self.cache.get(key)  # an unusual record (expiring, payload elsewhere): Prefect's own reader decides
        read: dict[str, bytes] = {}

        def read_payload(name: str) -> bytes:
            read[name] = (self.payloads / name).read_bytes()
            return read[name]

        why = _check_record(content, read_payload)
        if why is not None:
            _report(f"fp16guard: cache entry {path} not used ({why}); recomputing")
            return False, None
        try:
            return True, self._serializer.loads(read[record["storage_key"]])
        except ValueError as exc:
            _report(f"fp16guard: cache entry {path} not used (its payload is not fp16guard JSON: {exc}); recomputing")
            return False, None

    # ------------------------------------------------------------------------------ writes
    def put(self, key: str, value: Any) -> None:
        """Write ``value`` as the entry ``key`` (payload, then record). A value the serializer
        refuses is not cached (said on stderr), as the task itself would do."""
        from prefect.exceptions import SerializationError

        if not self.local:
            holder = self.cache.store.generate_default_holder()
            try:
                self.cache.store.write(value, key=key, holder=holder)
            except SerializationError as exc:
                _report(f"fp16guard: {self.cache.name} cache entry not written ({exc})")
            return
        try:
            payload = self._serializer.dumps(value)
        except SerializationError as exc:
            _report(f"fp16guard: {self.cache.name} cache entry not written ({exc})")
            return
        record = {**self._template, "storage_key": key, DIGEST_FIELD: hashlib.sha256(payload).hexdigest()}
        _replace(self.payloads / key, payload)
        _replace(self.records / key, json.dumps(record).encode("utf-8"))

    # ------------------------------------------------------------------------------ locks
    @contextmanager
    def locked(self, keys: Sequence[str]) -> Iterator[None]:
        """Hold one lease lock for the entries ``keys`` (a group's misses) while the block runs.

        Before the block, each entry's own lock (taken by :func:`~tasks.stats.shard_stats_task`
        through Prefect) is honoured: a live holder is waited for (its entry is then present), a
        dead holder's lock is removed (``is_locked`` breaks it).
        """
        manager = self.cache.store.lock_manager
        holder = self.cache.store.generate_default_holder()
        group = "group-" + hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
        manager.acquire_lock(group, holder)
        try:
            for key in keys:
                if manager.is_locked(key):
                    manager.acquire_lock(key, holder)
                    manager.release_lock(key, holder)
            yield
        finally:
            manager.release_lock(group, holder)


def _plain_name(name: Any) -> bool:
    """True when a record's ``storage_key`` is a plain file name in the payload folder (what
    Prefect writes for this cache's saved storage block)."""
    return isinstance(name, str) and bool(name) and "/" not in name and os.sep not in name and name not in (".", "..")


def _replace(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a temporary file renamed into place (readers see the
    whole file or the old one). Not fsynced: a torn entry after a crash fails its digest and is
    recomputed."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
