"""Cache policies for fp16guard tasks: keys from content digests, results that cannot run code,
locks that cannot outlive their holder.

Prefect facts this rests on (docs/FACTS.md #11-12, docs/FAILURES.md F1-F6): the DEFAULT policy
includes the run id (no reuse across runs), a ``Path`` argument is hashed by its string, and
concurrent identical runs all execute unless the policy is SERIALIZABLE with a lock manager. So
every cached task here takes content digests as arguments, excludes the path-like arguments from
the key, adds the task's source and the source of the library code it runs (:func:`code_digest`),
and locks on the key.

Three things Prefect does not give us, built here:

- **No code from the cache.** Prefect stores a result as a payload plus a metadata record that
  *names the serializer* used to read it back; its default is cloudpickle, and even its JSON
  serializer loads an encoder/decoder by qualified name taken from that record. Anyone who can
  write to a shared store could make every worker run code. Here results are written by
  :class:`SafeSerializer` (JSON, with Arrow tables as Arrow IPC streams: data only), and the
  metadata records are read through :class:`_VerifiedRecords`, which refuses any record that
  names another serializer or whose payload's sha256 differs from the one recorded beside the
  key. A refused record reads as a cache miss (logged), so the result is recomputed and the
  entry rewritten.
- **Locks that end with their holder, on every host that shares the store.**
  :class:`LeaseLockManager` adapts the lease locks of :mod:`fp16guard.store.lease` (holder pid,
  host and start time; an expiry renewed while the holder lives; a bounded wait that says what it
  waits for): lock files under ``<store>/.cache/locks`` for a local store, lock objects in the
  store itself for an S3 store (:class:`fp16guard.store.remote_locks.RemoteLeaseLocks`,
  conditional requests on the ETag), so SERIALIZABLE holds across hosts (:func:`lock_manager_for`).
- **Keys that see every dependency.** :func:`code_digest` hashes the source of every
  ``fp16guard`` module in the static import closure of the modules named;
  :func:`task_code_digest` starts that walk from a task module's own imports and from the
  module the backend registry names for the run's backend (imported there by string, which no
  static walk of ``import`` statements can see), so no list of modules is kept by hand.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.util
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.cache_policies import TASK_SOURCE, Inputs
from prefect.exceptions import SerializationError
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.locking.protocol import LockManager
from prefect.serializers import Serializer

from fp16guard.io.urls import fsspec_options, is_remote, local_path
from fp16guard.store.lease import LeaseLockBase
from fp16guard.store.locks import LeaseLocks

__all__ = [
    "cached",
    "code_digest",
    "import_closure",
    "backend_closure",
    "task_closure",
    "task_code_digest",
    "lock_dir_for",
    "lock_manager_for",
    "LeaseLockManager",
    "SafeSerializer",
    "DIGEST_FIELD",
]

_log = logging.getLogger("fp16guard.cache")

#: Field added to each cache metadata record: sha256 of the result payload it points to.
DIGEST_FIELD = "fp16guard_payload_sha256"
_SERIALIZER_TYPE = "fp16guard-json"
_ARROW_TAG = "__fp16guard_arrow_ipc__"


def _report(message: str) -> None:
    """Say ``message`` on stderr (the CLI keeps Prefect's console logs quiet, and a user whose
    run waits must see why) and on the task run's logger when there is one (the UI shows it)."""
    import sys

    print(message, file=sys.stderr, flush=True)
    try:
        from prefect.logging import get_run_logger

        get_run_logger().warning(message)
    except Exception:  # noqa: BLE001 — outside a run context
        _log.warning(message)


# ---------------------------------------------------------------------------------- serializer
class SafeSerializer(Serializer):
    """Results as JSON; ``pyarrow.Table`` values as base64 Arrow IPC streams. Reading never
    imports or calls anything named by the data, so a tampered payload can at worst fail to parse.

    Supports dict (str keys), list, tuple (read back as list), str, int, float (NaN/inf kept),
    bool, None, numpy scalars and arrays (read back as Python numbers / lists), pyarrow tables.
    Anything else raises ``SerializationError`` and the result is simply not cached.
    """

    type: Literal["fp16guard-json"] = _SERIALIZER_TYPE  # type: ignore[assignment]

    def dumps(self, obj: Any) -> bytes:
        try:
            return json.dumps(_encode(obj), allow_nan=True, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"result cannot be cached as data: {exc}") from exc

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob, object_hook=_decode)


def _encode(obj: Any) -> Any:
    import numpy as np

    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("dict keys must be strings")
        if _ARROW_TAG in obj:
            raise TypeError(f"key {_ARROW_TAG!r} is reserved")
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.generic):
        return _encode(obj.item())
    if isinstance(obj, np.ndarray):
        return _encode(obj.tolist())
    import pyarrow as pa

    if isinstance(obj, pa.Table):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, obj.schema) as writer:
            writer.write_table(obj)
        return {_ARROW_TAG: base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")}
    raise TypeError(f"{type(obj).__name__} is not a supported result type")


def _decode(obj: dict) -> Any:
    if _ARROW_TAG in obj and len(obj) == 1:
        import pyarrow as pa

        with pa.ipc.open_stream(pa.py_buffer(base64.b64decode(obj[_ARROW_TAG]))) as reader:
            return reader.read_all()
    return obj


# ---------------------------------------------------------------------------------- records
def _check_record(content: bytes, read_payload) -> str | None:
    """Why a cache metadata record must not be used, or None when it is sound.

    ``read_payload(storage_key) -> bytes`` reads the payload it points to."""
    try:
        record = json.loads(content)
    except ValueError as exc:
        return f"the record is not JSON ({exc})"
    if not isinstance(record, dict):
        return "the record is not a JSON object"
    serializer = record.get("serializer")
    if not isinstance(serializer, dict) or serializer.get("type") != _SERIALIZER_TYPE or set(serializer) - {"type"}:
        return f"the record names the serializer {serializer!r}; only {{'type': {_SERIALIZER_TYPE!r}}} is accepted"
    expected, key = record.get(DIGEST_FIELD), record.get("storage_key")
    if not isinstance(expected, str) or not isinstance(key, str):
        return "the record carries no payload digest"
    try:
        actual = hashlib.sha256(read_payload(key)).hexdigest()
    except Exception as exc:  # noqa: BLE001 — a missing or unreadable payload is a miss
        return f"its payload cannot be read ({type(exc).__name__}: {exc})"
    if actual != expected:
        return f"its payload's sha256 {actual[:12]}… differs from the recorded {expected[:12]}…"
    return None


def _with_digest(content: bytes, read_payload) -> bytes:
    """The metadata record plus the sha256 of the payload it points to (already written: Prefect
    writes the payload first, then the record)."""
    record = json.loads(content)
    record[DIGEST_FIELD] = hashlib.sha256(read_payload(record["storage_key"])).hexdigest()
    return json.dumps(record).encode("utf-8")


class _VerifiedRecordsMixin:
    """Cache metadata storage that adds a payload digest on write and refuses unsound records
    on read (raising makes Prefect treat the key as absent: a cache miss)."""

    def _payloads(self):
        raise NotImplementedError

    def _read_payload(self, key: str) -> bytes:
        return self._payloads().read_path(key, _sync=True)

    def _checked(self, path: str, content: bytes) -> bytes:
        why = _check_record(content, self._read_payload)
        if why is not None:
            _report(f"fp16guard: cache entry {path} not used ({why}); recomputing")
            raise ValueError(f"cache entry {path} refused: {why}")
        return content


class _VerifiedLocalRecords(_VerifiedRecordsMixin, LocalFileSystem):
    _block_type_slug = "fp16guard-verified-local-records"
    results_basepath: str = ""

    def _payloads(self):
        return LocalFileSystem(basepath=self.results_basepath)

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path, _sync=True)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self._checked(path, LocalFileSystem.read_path(self, path, _sync=True))

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content, _sync=True)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        return LocalFileSystem.write_path(self, path, _with_digest(content, self._read_payload), _sync=True)


class _VerifiedRemoteRecords(_VerifiedRecordsMixin, RemoteFileSystem):
    _block_type_slug = "fp16guard-verified-remote-records"
    results_basepath: str = ""

    def _payloads(self):
        return RemoteFileSystem(basepath=self.results_basepath, settings=self.settings)

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path, _sync=True)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self._checked(path, RemoteFileSystem.read_path(self, path, _sync=True))

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content, _sync=True)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        return RemoteFileSystem.write_path(self, path, _with_digest(content, self._read_payload), _sync=True)


# ---------------------------------------------------------------------------------- locks
class LeaseLockManager(LockManager):
    """Prefect's ``LockManager`` over lease locks (:class:`fp16guard.store.lease.LeaseLockBase`):
    lock files in a folder, or lock objects in an S3 store (see :func:`lock_manager_for`).

    ``acquire_lock`` with no timeout waits at most ``$FP16GUARD_LOCK_WAIT_S`` (default 1 h) for a
    *live* holder and then raises :class:`fp16guard.store.locks.LockTimeout` (an
    ``EnvironmentFailure``: exit status 3); a holder that died or stopped renewing is replaced at
    once. Waiting messages go to the task run's log.

    Args:
        locks: a lock object, or a folder for :class:`fp16guard.store.locks.LeaseLocks`.
        what: a few words naming what the locks protect (shown to waiters).
    """

    def __init__(self, locks: LeaseLockBase | Path, what: str = "") -> None:
        from tasks.orphans import lock_identity, on_stale_lock

        self.locks = locks if isinstance(locks, LeaseLockBase) else LeaseLocks(locks, report=_report)
        # Each lock names the flow run that took it; a lock broken because its holder died marks
        # that run Crashed on the server when its process is gone (issue 20).
        self.locks.identity = lock_identity
        self.locks.on_stale = on_stale_lock
        self.what = what

    @property
    def where(self) -> str:
        """The folder or store URL of the locks (what makes two managers the same)."""
        return str(getattr(self.locks, "url", None) or self.locks.folder)

    def __eq__(self, other: object) -> bool:  # the policy compares managers when combined
        return isinstance(other, LeaseLockManager) and other.where == self.where

    def __hash__(self) -> int:
        return hash(self.where)

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None) -> bool:
        return self.locks.acquire(key, holder, timeout=acquire_timeout, what=self.what)

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None) -> bool:
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        self.locks.release(key, holder)

    def is_locked(self, key: str) -> bool:
        return self.locks.is_locked(key)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return self.locks.is_holder(key, holder)

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return self.locks.wait(key, timeout)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return self.wait_for_lock(key, timeout)


# ---------------------------------------------------------------------------------- policy
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
        ``{"cache_policy", "result_storage", "result_serializer", "persist_result"}``. The policy
        is keyed on the inputs minus ``exclude`` plus the task's source, SERIALIZABLE with a
        :class:`LeaseLockManager` (two runs that need the same key at once compute it once, on
        one host or, for an S3 store, on any hosts: see :func:`lock_manager_for`); payloads are written by
        :class:`SafeSerializer` and records checked by their digest.
    """
    lock_manager = lock_manager_for(store_url, name, what=f"{name} cache entry")
    if not is_remote(store_url):
        root = Path(local_path(store_url)) / ".cache" / name
        (root / "records").mkdir(parents=True, exist_ok=True)
        (root / "results").mkdir(parents=True, exist_ok=True)
        results = LocalFileSystem(basepath=str(root / "results"))
        records = _VerifiedLocalRecords(basepath=str(root / "records"), results_basepath=str(root / "results"))
    else:
        base = f"{store_url.rstrip('/')}/.cache/{name}"
        options = fsspec_options(store_url)
        results = RemoteFileSystem(basepath=f"{base}/results", settings=options)
        records = _VerifiedRemoteRecords(basepath=f"{base}/records", settings=options, results_basepath=f"{base}/results")
    # Prefect resolves result storage server-side, so the block is saved under a name derived
    # from its location (idempotent; the same store gives the same block on every worker).
    results = _saved(results, "fp16guard-cache-" + hashlib.sha256(f"{store_url}|{name}".encode()).hexdigest()[:16])
    policy = (Inputs(exclude=list(exclude)) + TASK_SOURCE).configure(
        key_storage=records,
        lock_manager=lock_manager,
        isolation_level="SERIALIZABLE",
    )
    return {"cache_policy": policy, "result_storage": results, "result_serializer": SafeSerializer(), "persist_result": True}


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
    """A local folder for the store's host-local state: ``<store>/.cache/locks`` for a local store;
    for a remote one, a per-user folder keyed by the URL (its parent also holds the TensorRT
    timing cache). Cache locks of an S3 store do not live here but in the store itself
    (:func:`lock_manager_for`); those of other remote stores (gs://, memory://) do, and then
    serialise runs on one host only."""
    if not is_remote(store_url):
        return Path(local_path(store_url)) / ".cache" / "locks"
    return Path.home() / ".cache" / "fp16guard" / hashlib.sha256(store_url.encode()).hexdigest()[:16] / "locks"


def lock_manager_for(store_url: str, name: str, what: str = "") -> LeaseLockManager:
    """The lock manager of cache ``name`` of a store, keyed by cache key as before.

    - S3 store: lock objects ``<store>/.cache/locks/<name>/<key>.lock`` in the store itself,
      created with ``If-None-Match: *`` and renewed/broken with ``If-Match`` on their ETag
      (:class:`fp16guard.store.remote_locks.RemoteLeaseLocks`), so two hosts sharing the store
      never compute one entry both (Prefect's SERIALIZABLE isolation then holds across hosts);
    - local store: lock files in ``<store>/.cache/locks/<name>``;
    - other remote stores: lock files in the per-user folder of :func:`lock_dir_for` (per host).

    Hosts are told apart by ``$FP16GUARD_HOST_ID`` (default: the host name).

    Side effect: creates the local lock folder (local and non-S3 stores).
    """
    from fp16guard.store.conditional import supports_conditional
    from fp16guard.store.fs import open_fs

    if is_remote(store_url):
        fs = open_fs(store_url)  # as the store itself opens it (endpoint from the environment)
        if supports_conditional(fs):
            from fp16guard.store.remote_locks import RemoteLeaseLocks

            return LeaseLockManager(RemoteLeaseLocks(fs, f".cache/locks/{name}", report=_report), what=what)
    folder = lock_dir_for(store_url) / name
    folder.mkdir(parents=True, exist_ok=True)
    return LeaseLockManager(folder, what=what)


# ---------------------------------------------------------------------------------- code digest
def code_digest(*module_names: str, package: str | tuple[str, ...] = "fp16guard") -> str:
    """sha256 over the source of every ``package`` module in the import closure of
    ``module_names`` (see :func:`import_closure`), so a change anywhere in how a result is
    computed invalidates its cache, even in a module the caller did not think to name."""
    return _digest_of(import_closure(*module_names, package=package))


def _digest_of(modules: set[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(modules):
        h.update(name.encode() + b"\0")
        h.update(_source(name) + b"\0")
    return h.hexdigest()


def backend_closure(backend: str | None) -> set[str]:
    """Every module that backend ``backend`` (a registry name; None: the default) can import:
    the import closure of the registry and of the module the registry makes it from.

    The registry imports backends by string (``"fp16guard.backends.tensorrt.backend:make_backend"``),
    so a walk of ``import`` statements from the registry alone never reaches them; asking the
    registry which module makes the backend closes that gap. A backend registered from another
    package brings that package's modules in too.
    """
    from fp16guard.backends.registry import backend_module

    module = backend_module(backend)
    packages = tuple(dict.fromkeys(("fp16guard", module.split(".")[0])))
    return import_closure("fp16guard.backends.registry", module, package=packages)


def task_closure(task_module: str, backend: str | None = None) -> set[str]:
    """The library modules a task's result depends on: the import closure of every ``fp16guard``
    module that ``task_module`` imports (read from its source, so the list is never kept by
    hand), plus :func:`backend_closure` of the run's ``backend`` when the task runs one.

    Raises:
        ValueError: ``task_module`` cannot be found.
    """
    if _find(task_module) is None:
        raise ValueError(f"task module {task_module!r} cannot be found")
    start = [m for m in _imports_of(task_module) if m == "fp16guard" or m.startswith("fp16guard.")]
    modules = import_closure(*start)
    if backend is not None:
        modules |= backend_closure(backend)
    return modules


def task_code_digest(task_module: str, backend: str | None = None) -> str:
    """The code part of a task's cache key: :func:`code_digest` over :func:`task_closure`."""
    return _digest_of(task_closure(task_module, backend))


def import_closure(*module_names: str, package: str | tuple[str, ...] = "fp16guard") -> set[str]:
    """Names of the ``package`` modules reachable from ``module_names`` through ``import``
    statements anywhere in their source (module level and inside functions, relative imports
    included), found by reading the source (static: no module is executed). Parent packages of
    each module are included (their ``__init__`` runs on import). ``package`` may be a tuple of
    top-level package names."""
    packages = (package,) if isinstance(package, str) else tuple(package)
    seen: set[str] = set()
    todo = list(module_names)
    while todo:
        name = todo.pop()
        if name in seen or not any(name == p or name.startswith(p + ".") for p in packages):
            continue
        if _find(name) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports_of(name))
    return seen


@lru_cache(maxsize=None)
def _find(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _source(name: str) -> bytes:
    spec = _find(name)
    if spec is None or not spec.origin or not spec.has_location:
        return b""
    return Path(spec.origin).read_bytes()


def _imports_of(name: str) -> list[str]:
    spec = _find(name)
    source = _source(name)
    if not source:
        return []
    is_package = bool(spec.submodule_search_locations)
    tree = ast.parse(source)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(module)
            # ``from pkg import mod`` may name a submodule rather than an attribute.
            found.extend(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
    return [f for f in found if f]


# ---------------------------------------------------------------------------------- per-entry access
class TaskCache:
    """The cache of a task declared with :func:`cached`, read and written entry by entry from
    *another* task (issue 18: a task that measures a group of shards caches each shard on its own).

    The key of an entry is computed by the very policy ``task.with_options(**cached(...))`` would
    use (its inputs minus ``exclude``, plus the task's source), and entries are read and written
    through Prefect's own ``ResultStore`` over the same verified records, payload storage,
    serializer and lease locks; so an entry written here is a hit for the task itself and the
    other way round, a tampered or torn entry is a miss, and two runs that miss the same entry at
    once compute it once.

    Args:
        store_url: the store root (as for :func:`cached`).
        name: the cache name (e.g. "stats").
        task: the task whose cache this is (its source is part of every key).
        exclude: argument names left out of the key, exactly as the task is declared with.
    """

    def __init__(self, store_url: str, name: str, task, exclude: list[str]) -> None:
        from prefect.results import ResultStore

        options = cached(store_url, name, exclude)
        self.task = task.with_options(**options)
        self.policy = options["cache_policy"]
        self.store = ResultStore(cache_result_in_memory=False).update_for_task(self.task)
        self.name = name

    def key(self, inputs: dict[str, Any]) -> str:
        """The cache key of a call of the task with ``inputs`` (every argument, by name, as the
        task would be called; excluded ones may be left out)."""
        from types import SimpleNamespace

        key = self.policy.compute_key(task_ctx=SimpleNamespace(task=self.task), inputs=dict(inputs), flow_parameters={})
        if key is None:
            raise ValueError(f"no cache key for {self.name}: the policy gave none")
        return key

    def get(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` when the entry is present and sound, else ``(False, None)``. Waits
        (bounded, see :class:`LeaseLockManager`) while a live holder computes it."""
        try:
            return True, self.store.read(key).result
        except Exception:  # noqa: BLE001 — absent, refused (logged by the records) or unreadable: a miss
            return False, None

    def compute(self, key: str, make):
        """The entry's value: read it if present, else ``make()`` under the entry's lock, written
        to the cache (a value the serializer refuses is returned uncached, as the task would)."""
        holder = self.store.generate_default_holder()
        self.store.acquire_lock(key, holder=holder)
        try:
            if self.store.exists(key):
                found, value = self.get(key)
                if found:
                    return value
            value = make()
            try:
                self.store.write(value, key=key, holder=holder)
            except SerializationError as exc:
                _report(f"fp16guard: {self.name} cache entry not written ({exc})")
            return value
        finally:
            self.store.release_lock(key, holder=holder)
