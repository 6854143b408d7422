"""The versioned artifact store: every run kept, one release per model version, nothing half-written.

Layout (``<store>`` is a folder, a ``file://`` URL or any fsspec URL such as ``s3://bucket/prefix``)::

    <store>/<name>/<version>/
        runs/<run-id>/            one folder per finished run (verified or rejected)
            status.json           written by the store, LAST: {"status": "verified"|"rejected",
                                  "reason", "committed_at", "run_id", "name", "version",
                                  "files": {relpath: {"sha256", "bytes"}}} — a run exists iff
                                  this file exists
            manifest.json, plan.json, verification.json, stats.parquet, model.mixed.onnx,
            report.html, ...      whatever the flow wrote (the store does not interpret them,
                                  except manifest.json for verify/history, see store.audit)
        releases/000001.json      append-only release history, one record per release decision:
        releases/000002.json      {"seq", "run_id", "previous_run_id", "promoted", "released_at",
                                  "name", "version"}; the highest number is the current release
        release.json              a copy of the newest release record (for people and tools;
                                  the authoritative answer is the highest-numbered record)
        .staging/, .lock          local stores only: unfinished runs (removed with the last of
                                  them) and the release lock

Guarantees:

- **Nothing half-written is visible.** A run is written into a staging folder (local stores: under
  ``.staging/`` on the same file system, then renamed into ``runs/<run-id>`` — one atomic rename;
  object stores: a local temporary folder whose files are uploaded one atomic PUT each, with
  ``status.json`` uploaded last). Readers list only runs that have ``status.json``.
- **Bad input leaves nothing.** ``StagedRun`` used as a context manager deletes its staging
  folder when the block raises or ends without ``commit``.
- **Write once.** A run id is claimed exclusively at commit (local: ``mkdir``; S3: conditional
  PUT ``If-None-Match: *`` of ``runs/<id>/.claim``); committing an existing id raises
  ``StoreError``. There is no API that writes into a committed run, so released runs are
  immutable. Rejected runs are kept, marked ``"status": "rejected"``.
- **Release gate.** Only a run whose status is ``verified`` can be released. The first verified
  run of a version is released; a later one replaces it only with ``promote=True``; every
  decision is a new ``releases/NNNNNN.json`` (the previous release stays in history).
- **Concurrency.** Release records are created exclusively (local: ``os.link``, under an
  ``fcntl.flock`` on ``.lock``; S3: conditional PUT), so when two runs of one version finish at
  once both are stored and exactly one wins the release. Limit: fsspec back ends other than
  local and S3 (gs://, memory://) fall back to check-then-write for the exclusive create, so two
  writers finishing in the same instant could both record a release there (the later record then
  simply supersedes the earlier, and history shows both).
- **Cache entries are computed once, across hosts.** The cached tasks lock each entry
  (``tasks.caching.lock_manager_for``): on an S3 store the locks are lease records in the store
  itself (``.cache/locks/<cache>/<key>.lock``, created with ``If-None-Match: *``, renewed and
  broken with ``If-Match`` on their ETag: :mod:`fp16guard.store.remote_locks`), so two hosts
  sharing the store never compute one shard both; on a local store they are lock files in
  ``.cache/locks``; other fsspec back ends keep per-host lock files.

Store root: explicit value, else ``$FP16GUARD_STORE``, else ``./fp16guard-store``. For S3,
``$FP16GUARD_S3_ENDPOINT_URL`` (or the standard ``AWS_ENDPOINT_URL``) selects an S3-compatible
server; credentials come from the usual AWS variables/files.

Names and versions are checked with :func:`fp16guard.settings.check_segment` (no '/', no '..').
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fp16guard.errors import StoreError
from fp16guard.settings import check_segment
from fp16guard.store.fs import LocalFS, RemoteFS, StoreIOError, UnsafeLink, io_errors, new_work_dir, open_fs, run_files

__all__ = [
    "Store", "StagedRun", "RunRef", "ReleaseDecision", "DamagedRecord", "open_store", "resolve_root", "run_files",
    "new_run_id", "remove_staging", "utc_now", "STATUS_FILE", "VERIFIED", "REJECTED", "STORE_ENV", "DEFAULT_STORE",
]

STORE_ENV = "FP16GUARD_STORE"
DEFAULT_STORE = "./fp16guard-store"
STATUS_FILE = "status.json"
#: Prefix of the local temporary folders that runs for object stores are written into.
TEMP_PREFIX = "fp16guard-run-"
VERIFIED, REJECTED = "verified", "rejected"
_RELEASE_RETRIES = 50  # each retry means another writer released in between; 50 is plenty
_STAGING_RETRIES = 20  # each retry means another run emptied and removed .staging/ in between


def resolve_root(root: str | os.PathLike | None = None) -> str:
    """Return the store root: ``root`` if given, else ``$FP16GUARD_STORE``, else ``./fp16guard-store``."""
    if root:
        return str(root)
    return os.environ.get(STORE_ENV) or DEFAULT_STORE


def utc_now() -> str:
    """Current UTC time as ISO 8601 with a ``Z`` suffix, second precision plus microseconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id() -> str:
    """A fresh, time-sortable run id: ``YYYYmmddTHHMMSSZ-<8 hex>``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


class DamagedRecord(StoreError):
    """A record the store wrote (``status.json``, a release record) or a run file it is asked to
    parse is not what it should be: not JSON, not an object, or missing its fields. Readers
    (``history``, ``show``, ``verify-store``) report it and go on where they can."""


def _parse_record(data: bytes, where: str, required: dict[str, type] | None = None) -> dict:
    """Parse a JSON object, raising :class:`DamagedRecord` naming ``where`` when it is not one
    or lacks a ``required`` field of the right type."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise DamagedRecord(f"{where} is damaged: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DamagedRecord(f"{where} is damaged: a JSON {type(value).__name__}, expected an object")
    for key, kind in (required or {}).items():
        if not isinstance(value.get(key), kind):
            raise DamagedRecord(f"{where} is damaged: field {key!r} is {value.get(key)!r}, expected a {kind.__name__}")
    return value


def _segment(value: str, what: str) -> str:
    try:
        return check_segment(str(value), what)
    except ValueError as exc:
        raise StoreError(str(exc)) from None


@dataclass(frozen=True)
class RunRef:
    """A committed run: where it is and how it ended."""

    name: str
    version: str
    run_id: str
    status: str  # "verified" | "rejected"
    url: str  # location of the run folder (path or URL)


@dataclass(frozen=True)
class ReleaseDecision:
    """The outcome of :meth:`Store.release`.

    Attributes:
        released: True when ``run_id`` is the current release after the call.
        run_id: the run asked about.
        current_run_id: the version's current release after the call.
        previous_run_id: the release this one replaced (None when it was the first).
        reason: one line for people ("first verified run of m/1", "m/1 is already released
            (run X); run again with --promote to replace it", ...).
        record: the release record written (None when nothing was written).
    """

    released: bool
    run_id: str
    current_run_id: str | None
    previous_run_id: str | None
    reason: str
    record: dict | None = None


class Store:
    """A store root. Cheap to create; holds no open files.

    Args:
        root: folder, ``file://`` URL or fsspec URL. Default: see :func:`resolve_root`.
        storage_options: passed to fsspec for URLs (e.g. ``{"endpoint_url": ...}`` for S3).
    """

    def __init__(self, root: str | os.PathLike | None = None, storage_options: dict | None = None):
        self.fs: LocalFS | RemoteFS = open_fs(resolve_root(root), storage_options)
        self.url = self.fs.url

    # ----------------------------------------------------------------- paths
    @staticmethod
    def _version_dir(name: str, version: str) -> str:
        return f"{_segment(name, 'name')}/{_segment(version, 'version')}"

    def run_path(self, name: str, version: str, run_id: str) -> str:
        """The run folder relative to the store root (``<name>/<version>/runs/<id>``), for
        calls on :attr:`fs`; names are checked (no '/', no '..')."""
        return f"{self._version_dir(name, version)}/runs/{_segment(run_id, 'run id')}"

    def _staging_rel(self, name: str, version: str) -> str:
        return f"{self._version_dir(name, version)}/.staging"

    def discard_staged(self, name: str, version: str) -> list[Path]:
        """Remove the staging folders of ``name``/``version`` that this process owns (its
        :data:`fp16guard.store.fs.OWNER_FILE` names this pid on this host) or whose owner is
        gone, then ``.staging/`` itself when it is empty; for object stores, this process's local
        temporary run folders.

        For a caller that stops a run from outside the flow's own clean-up (an interrupt or a
        lost server landing between two tasks, where the flow never learnt its staging folder).
        A folder another live process owns is never touched.

        Returns:
            The folders removed. Errors are ignored (another process may clean up the same
            folder; nothing here must turn an interrupt into a traceback).
        """
        import socket

        from fp16guard.store.fs import OWNER_FILE, sweep_work_dirs

        if isinstance(self.fs, LocalFS):
            try:
                parent = Path(self.fs._p(self._staging_rel(name, version)))
            except StoreError:
                return []
            prefix = "run-"
        else:
            parent, prefix = Path(tempfile.gettempdir()), TEMP_PREFIX
        removed: list[Path] = []
        me = (os.getpid(), socket.gethostname())
        try:
            folders = sorted(parent.glob(f"{prefix}*")) if parent.is_dir() else []
        except OSError:
            folders = []
        for folder in folders:
            try:
                owner = json.loads((folder / OWNER_FILE).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(owner, dict) and (owner.get("pid"), owner.get("host")) == me:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        if parent.is_dir():
            removed += sweep_work_dirs(parent, prefix)
        if isinstance(self.fs, LocalFS):
            _drop_if_empty(parent)
        return removed

    def run_url(self, name: str, version: str, run_id: str) -> str:
        """Location of a run folder (local path or URL), whether or not it exists."""
        return f"{self.url}/{self.run_path(name, version, run_id)}"

    # ----------------------------------------------------------------- writing runs
    def stage_run(self, name: str, version: str, run_id: str | None = None) -> "StagedRun":
        """Start a run: returns a :class:`StagedRun` whose ``path`` is a local folder to write into.

        Nothing is visible in the store until :meth:`StagedRun.commit`. Use it as a context
        manager so an exception (bad input) removes the staging folder.

        Raises:
            StoreError: bad name/version/run id, or the run id already exists.
        """
        run_id = run_id or new_run_id()
        run_dir = self.run_path(name, version, run_id)
        if self.fs.exists(f"{run_dir}/{STATUS_FILE}") or (self.fs.is_local and self.fs.exists(run_dir)):
            raise StoreError(f"run {name}/{version}/{run_id} already exists in {self.url}; expected a new run id (runs are never overwritten)")
        if isinstance(self.fs, LocalFS):
            path = None
            for _ in range(_STAGING_RETRIES):
                try:
                    path = self.fs.staging_dir(self._staging_rel(name, version))
                    break
                except FileNotFoundError:  # another run removed the empty .staging/ just then
                    continue
            if path is None:
                path = self.fs.staging_dir(self._staging_rel(name, version))  # a last try raises
        else:
            # Object stores: files are uploaded from a local folder. Folders of runs whose
            # process is gone are swept here, so killed runs do not fill the temp folder.
            path = new_work_dir(tempfile.gettempdir(), TEMP_PREFIX)
        return StagedRun(self, name, version, run_id, path)

    def put_run(self, name: str, version: str, src_dir: str | os.PathLike, *, verified: bool, reason: str = "", run_id: str | None = None) -> RunRef:
        """Copy every file under ``src_dir`` into a new run and commit it (one call).

        Side effects: writes ``<store>/<name>/<version>/runs/<run-id>/``; ``src_dir`` is untouched.
        """
        src = Path(src_dir)
        if not src.is_dir():
            raise StoreError(f"run folder {src} does not exist; expected a folder of run outputs")
        with self.stage_run(name, version, run_id) as staged:
            with io_errors("copy the run into", staged.path):
                # File by file (not copytree, which folds errors into one errno-less shutil.Error).
                for rel in run_files(src):
                    (staged.path / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / rel, staged.path / rel)
            return staged.commit(verified=verified, reason=reason)

    # ----------------------------------------------------------------- reading
    def names(self) -> list[str]:
        """Model names in the store."""
        return [n for n in self.fs.listdir("") if not n.startswith(".")]

    def versions(self, name: str) -> list[str]:
        """Versions of ``name`` in the store."""
        return [v for v in self.fs.listdir(_segment(name, "name")) if not v.startswith(".")]

    def runs(self, name: str, version: str) -> list[str]:
        """Committed run ids of a version (those with ``status.json``), oldest id first."""
        base = f"{self._version_dir(name, version)}/runs"
        return [r for r in self.fs.listdir(base) if not r.startswith(".") and self.fs.exists(f"{base}/{r}/{STATUS_FILE}")]

    def read_bytes(self, name: str, version: str, run_id: str, filename: str) -> bytes:
        """Bytes of one file of a committed run. Raises ``StoreError`` if missing."""
        rel = f"{self.run_path(name, version, run_id)}/{_relpath(filename)}"
        try:
            return self.fs.read_bytes(rel)
        except (FileNotFoundError, IsADirectoryError):
            raise StoreError(f"{filename} not found in run {name}/{version}/{run_id} of {self.url}") from None

    def read_json(self, name: str, version: str, run_id: str, filename: str, default: Any = StoreError) -> Any:
        """Parsed JSON object of a run file; ``default`` when missing (raises ``StoreError`` if
        not given).

        Raises:
            DamagedRecord: the file exists but is not a JSON object.
            UnsafeLink: the file is a symbolic link out of the store (not followed).
        """
        try:
            data = self.read_bytes(name, version, run_id, filename)
        except (DamagedRecord, UnsafeLink):
            raise
        except StoreError:
            if default is StoreError:
                raise
            return default
        return _parse_record(data, f"{filename} of run {name}/{version}/{run_id}")

    def run_status(self, name: str, version: str, run_id: str) -> dict:
        """Content of the run's ``status.json``.

        Raises:
            StoreError: the run does not exist.
            DamagedRecord: ``status.json`` is not a JSON object with a string ``status``.
        """
        try:
            data = self.fs.read_bytes(f"{self.run_path(name, version, run_id)}/{STATUS_FILE}")
        except FileNotFoundError:
            raise StoreError(f"run {name}/{version}/{run_id} not found in {self.url}; `fp16guard history {name}` lists the runs") from None
        status = _parse_record(data, f"{STATUS_FILE} of run {name}/{version}/{run_id}", {"status": str})
        if not isinstance(status.get("files", {}), dict):
            raise DamagedRecord(f"{STATUS_FILE} of run {name}/{version}/{run_id} is damaged: 'files' is not an object")
        return status

    def release_history(self, name: str, version: str, problems: list[str] | None = None) -> list[dict]:
        """Every sound release record of a version, oldest first (the last one is current).

        Args:
            problems: when given, one line is appended per damaged record (not JSON, no integer
                ``seq`` or string ``run_id``, or a ``seq`` that differs from its file name);
                damaged records are skipped either way.
        """
        base = f"{self._version_dir(name, version)}/releases"
        records = []
        for entry in self._release_files(base):
            where = f"release record {name}/{version}/releases/{entry}"
            try:
                record = _parse_record(self.fs.read_bytes(f"{base}/{entry}"), where, {"seq": int, "run_id": str})
                if record["seq"] != int(entry[:-5]):
                    raise DamagedRecord(f"{where} is damaged: seq {record['seq']} does not match its file name")
            except DamagedRecord as exc:
                if problems is not None:
                    problems.append(str(exc))
                continue
            records.append(record)
        return sorted(records, key=lambda r: r["seq"])

    def _release_files(self, base: str) -> list[str]:
        return sorted(e for e in self.fs.listdir(base) if e.endswith(".json") and e[:-5].isdigit())

    def current_release(self, name: str, version: str, problems: list[str] | None = None) -> dict | None:
        """The current release record of a version (the highest sound one), or None if nothing
        was released; damaged records are noted in ``problems`` (see :meth:`release_history`)."""
        records = self.release_history(name, version, problems)
        return records[-1] if records else None

    # ----------------------------------------------------------------- releasing
    def release(self, name: str, version: str, run_id: str, promote: bool = False) -> ReleaseDecision:
        """Apply the release gate to a committed run.

        The first verified run of a version is released; a later one replaces the current release
        only when ``promote`` is True. Safe against concurrent callers (see module docstring).

        Side effects: may create ``releases/NNNNNN.json`` and rewrite ``release.json``.

        Raises:
            StoreError: the run does not exist or was not verified.
        """
        status = self.run_status(name, version, run_id)
        if status.get("status") != VERIFIED:
            raise StoreError(f"run {name}/{version}/{run_id} is {status.get('status')!r} ({status.get('reason') or 'no reason'}); only a verified run can be released")
        vdir = self._version_dir(name, version)
        with self.fs.lock(f"{vdir}/.lock"):
            for _ in range(_RELEASE_RETRIES):
                # List the record files *before* reading the current release: a record another
                # writer creates in between then shows up in ``current`` (and we stop), or takes
                # the number we compute (and our exclusive create fails, so we re-read). Listing
                # after reading would let us skip past a fresh release to the next number.
                taken = [int(e[:-5]) for e in self._release_files(f"{vdir}/releases")]
                current = self.current_release(name, version)
                cur_id = current["run_id"] if current else None
                if cur_id == run_id:
                    return ReleaseDecision(True, run_id, run_id, current.get("previous_run_id"), f"run {run_id} is already the release of {name}/{version}")
                if current and not promote:
                    return ReleaseDecision(False, run_id, cur_id, None, f"{name}/{version} is already released (run {cur_id}); run again with --promote to replace it")
                # The next number follows every record file, damaged ones included (their
                # numbers are taken).
                record = {
                    "seq": max(taken + [current["seq"] if current else 0]) + 1,
                    "name": name,
                    "version": version,
                    "run_id": run_id,
                    "previous_run_id": cur_id,
                    "promoted": current is not None,
                    "released_at": utc_now(),
                }
                data = _json_bytes(record)
                try:
                    created = self.fs.create_exclusive(f"{vdir}/releases/{record['seq']:06d}.json", data)
                except StoreIOError as exc:
                    raise StoreIOError(f"{exc}; nothing was released (run {run_id} is stored, verified, and can be released later)") from None
                if created:
                    why = f"promoted over run {cur_id}" if current else f"first verified run of {name}/{version}"
                    try:
                        self._write_mirror(vdir, name, version)
                    except StoreIOError as exc:
                        # The record above *is* the release; the mirror is a convenience copy.
                        why += f" (release.json not updated: {exc}; releases/{record['seq']:06d}.json is authoritative)"
                    return ReleaseDecision(True, run_id, run_id, cur_id, why, record)
                # Another writer took this sequence number between our read and our create: re-read.
        raise StoreError(f"could not record a release of {name}/{version} after {_RELEASE_RETRIES} attempts; other writers keep releasing")

    def _write_mirror(self, vdir: str, name: str, version: str) -> None:
        # Two promoters may write release.json out of order; re-read the history after writing and
        # repair the mirror so it ends up naming the highest record.
        for _ in range(3):
            newest = self.current_release(name, version)
            self.fs.write_bytes(f"{vdir}/release.json", _json_bytes(newest))
            if self.current_release(name, version) == newest:
                return


@dataclass
class StagedRun:
    """A run being written. Write files under ``path`` (a local folder), then :meth:`commit`.

    Attributes:
        store, name, version, run_id: where the run will appear.
        path: local folder to write the run's files into (subfolders allowed; names starting
            with '.' are ignored). Local stores: on the store's file system, so commit is a rename.
    """

    store: Store
    name: str
    version: str
    run_id: str
    path: Path
    committed: RunRef | None = field(default=None)

    def __enter__(self) -> "StagedRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed is None:
            self.abort()

    def abort(self) -> None:
        """Delete the staging folder (and ``.staging/`` when no other run uses it); the store is
        left as if the run never started."""
        remove_staging(self.path)

    def commit(self, verified: bool, reason: str = "") -> RunRef:
        """Publish the run with its status; after this the run is read-only.

        Args:
            verified: True when verification passed (the run may then be released); False keeps
                the run as ``rejected``.
            reason: one line (why it was rejected, or a note).

        Returns:
            The committed run.

        Raises:
            StoreError: already committed, or the run id was taken meanwhile.
        """
        if self.committed is not None:
            raise StoreError(f"run {self.run_id} is already committed; a committed run cannot be written again")
        from fp16guard.store.lineage import output_records

        with io_errors("read the staged run", self.path):
            files = output_records(self.path, exclude=(STATUS_FILE,))
        status = {
            "status": VERIFIED if verified else REJECTED,
            "reason": reason,
            "committed_at": utc_now(),
            "run_id": self.run_id,
            "name": self.name,
            "version": self.version,
            "files": files,
        }
        store, run_dir = self.store, self.store.run_path(self.name, self.version, self.run_id)
        taken = StoreError(f"run {self.name}/{self.version}/{self.run_id} already exists in {store.url}; runs are never overwritten")
        if isinstance(store.fs, LocalFS):
            from fp16guard.io import atomic

            with io_errors("write", self.path / STATUS_FILE):
                atomic.write_bytes(self.path / STATUS_FILE, _json_bytes(status))
            try:
                store.fs.publish_dir(self.path, run_dir)
            except FileExistsError:
                raise taken from None
            _drop_if_empty(self.path.parent)
        else:
            if not store.fs.create_exclusive(f"{run_dir}/.claim", _json_bytes({"claimed_at": utc_now()})):
                raise taken
            for rel in files:
                store.fs.put_file(self.path / rel, f"{run_dir}/{rel}")
            if not store.fs.create_exclusive(f"{run_dir}/{STATUS_FILE}", _json_bytes(status)):
                raise taken
            shutil.rmtree(self.path, ignore_errors=True)
        self.committed = RunRef(self.name, self.version, self.run_id, status["status"], store.run_url(self.name, self.version, self.run_id))
        return self.committed


def remove_staging(path: str | os.PathLike) -> None:
    """Delete a staging folder, and its ``.staging/`` parent when no other run uses it (errors
    ignored: it may be gone already)."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    _drop_if_empty(path.parent)


def _drop_if_empty(staging: Path) -> None:
    """Remove a ``.staging/`` folder that no run uses any more (``rmdir`` refuses a folder another
    run has just staged into, which is the point; :meth:`Store.stage_run` retries when this
    removes the folder between its ``mkdir`` and its ``mkdtemp``)."""
    if staging.name != ".staging":
        return
    try:
        staging.rmdir()
    except OSError:
        pass


def _relpath(filename: str) -> str:
    parts = str(filename).replace("\\", "/").split("/")
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"file name {filename!r} is not allowed; expected a relative path inside the run")
    return "/".join(parts)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def open_store(store: "Store | str | os.PathLike | None" = None) -> Store:
    """Return ``store`` if it is a :class:`Store`, else open one at that root (see :func:`resolve_root`)."""
    return store if isinstance(store, Store) else Store(store)

