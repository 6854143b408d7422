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
                                  except manifest.json for verify/history, see store_audit)
        releases/000001.json      append-only release history, one record per release decision:
        releases/000002.json      {"seq", "run_id", "previous_run_id", "promoted", "released_at",
                                  "name", "version"}; the highest number is the current release
        release.json              a copy of the newest release record (for people and tools;
                                  the authoritative answer is the highest-numbered record)
        .staging/, .lock          local stores only: unfinished runs and the release lock

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
from fp16guard.store.fs import LocalFS, RemoteFS, open_fs

STORE_ENV = "FP16GUARD_STORE"
DEFAULT_STORE = "./fp16guard-store"
STATUS_FILE = "status.json"
VERIFIED, REJECTED = "verified", "rejected"
_RELEASE_RETRIES = 50  # each retry means another writer released in between; 50 is plenty


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
            (run X); pass promote=True to replace it", ...).
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

    def _run_dir(self, name: str, version: str, run_id: str) -> str:
        return f"{self._version_dir(name, version)}/runs/{_segment(run_id, 'run id')}"

    def run_url(self, name: str, version: str, run_id: str) -> str:
        """Location of a run folder (local path or URL), whether or not it exists."""
        return f"{self.url}/{self._run_dir(name, version, run_id)}"

    # ----------------------------------------------------------------- writing runs
    def stage_run(self, name: str, version: str, run_id: str | None = None) -> "StagedRun":
        """Start a run: returns a :class:`StagedRun` whose ``path`` is a local folder to write into.

        Nothing is visible in the store until :meth:`StagedRun.commit`. Use it as a context
        manager so an exception (bad input) removes the staging folder.

        Raises:
            StoreError: bad name/version/run id, or the run id already exists.
        """
        run_id = run_id or new_run_id()
        run_dir = self._run_dir(name, version, run_id)
        if self.fs.exists(f"{run_dir}/{STATUS_FILE}") or (self.fs.is_local and self.fs.exists(run_dir)):
            raise StoreError(f"run {name}/{version}/{run_id} already exists in {self.url}; expected a new run id (runs are never overwritten)")
        if isinstance(self.fs, LocalFS):
            path = self.fs.staging_dir(f"{self._version_dir(name, version)}/.staging")
        else:
            path = Path(tempfile.mkdtemp(prefix="fp16guard-run-"))
        return StagedRun(self, name, version, run_id, path)

    def put_run(self, name: str, version: str, src_dir: str | os.PathLike, *, verified: bool, reason: str = "", run_id: str | None = None) -> RunRef:
        """Copy every file under ``src_dir`` into a new run and commit it (one call).

        Side effects: writes ``<store>/<name>/<version>/runs/<run-id>/``; ``src_dir`` is untouched.
        """
        src = Path(src_dir)
        if not src.is_dir():
            raise StoreError(f"run folder {src} does not exist; expected a folder of run outputs")
        with self.stage_run(name, version, run_id) as staged:
            shutil.copytree(src, staged.path, dirs_exist_ok=True)
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
        rel = f"{self._run_dir(name, version, run_id)}/{_relpath(filename)}"
        try:
            return self.fs.read_bytes(rel)
        except FileNotFoundError:
            raise StoreError(f"{filename} not found in run {name}/{version}/{run_id} of {self.url}") from None

    def read_json(self, name: str, version: str, run_id: str, filename: str, default: Any = StoreError) -> Any:
        """Parsed JSON file of a run; ``default`` when missing (raises ``StoreError`` if not given)."""
        try:
            return json.loads(self.read_bytes(name, version, run_id, filename))
        except StoreError:
            if default is StoreError:
                raise
            return default

    def run_status(self, name: str, version: str, run_id: str) -> dict:
        """Content of the run's ``status.json``. Raises ``StoreError`` if the run does not exist."""
        try:
            return json.loads(self.fs.read_bytes(f"{self._run_dir(name, version, run_id)}/{STATUS_FILE}"))
        except FileNotFoundError:
            raise StoreError(f"run {name}/{version}/{run_id} not found in {self.url}; `fp16guard history {name}` lists the runs") from None

    def release_history(self, name: str, version: str) -> list[dict]:
        """Every release record of a version, oldest first (the last one is current)."""
        base = f"{self._version_dir(name, version)}/releases"
        records = []
        for entry in self.fs.listdir(base):
            if entry.endswith(".json") and entry[:-5].isdigit():
                records.append(json.loads(self.fs.read_bytes(f"{base}/{entry}")))
        return sorted(records, key=lambda r: r["seq"])

    def current_release(self, name: str, version: str) -> dict | None:
        """The current release record of a version, or None if nothing was released."""
        records = self.release_history(name, version)
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
                current = self.current_release(name, version)
                cur_id = current["run_id"] if current else None
                if cur_id == run_id:
                    return ReleaseDecision(True, run_id, run_id, current.get("previous_run_id"), f"run {run_id} is already the release of {name}/{version}")
                if current and not promote:
                    return ReleaseDecision(False, run_id, cur_id, None, f"{name}/{version} is already released (run {cur_id}); pass promote=True (--promote) to replace it")
                record = {
                    "seq": (current["seq"] if current else 0) + 1,
                    "name": name,
                    "version": version,
                    "run_id": run_id,
                    "previous_run_id": cur_id,
                    "promoted": current is not None,
                    "released_at": utc_now(),
                }
                data = _json_bytes(record)
                if self.fs.create_exclusive(f"{vdir}/releases/{record['seq']:06d}.json", data):
                    self._write_mirror(vdir, name, version)
                    why = f"promoted over run {cur_id}" if current else f"first verified run of {name}/{version}"
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

    # ----------------------------------------------------------------- audit
    def verify_run(self, name: str, version: str, run_id: str | None = None, check_inputs: bool = False) -> list[str]:
        """Re-hash a run's files; see :func:`fp16guard.store.audit.verify_run`."""
        from fp16guard.store.audit import verify_run

        return verify_run(self, name, version, run_id, check_inputs=check_inputs)

    def history(self, name: str, version: str | None = None) -> list[dict]:
        """Rows describing every run; see :func:`fp16guard.store.audit.history`."""
        from fp16guard.store.audit import history

        return history(self, name, version)


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
        """Delete the staging folder; the store is left as if the run never started."""
        shutil.rmtree(self.path, ignore_errors=True)

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
        store, run_dir = self.store, self.store._run_dir(self.name, self.version, self.run_id)
        taken = StoreError(f"run {self.name}/{self.version}/{self.run_id} already exists in {store.url}; runs are never overwritten")
        if isinstance(store.fs, LocalFS):
            from fp16guard.io import atomic

            atomic.write_bytes(self.path / STATUS_FILE, _json_bytes(status))
            try:
                store.fs.publish_dir(self.path, run_dir)
            except FileExistsError:
                raise taken from None
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


def run_files(root: Path) -> list[str]:
    """Relative '/'-joined paths of the files under ``root``, skipping names that start with '.'."""
    out = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return out


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


def verify_run(store: "Store | str | None", name: str, version: str, run_id: str | None = None, check_inputs: bool = False) -> list[str]:
    """Module-level form of :meth:`Store.verify_run`."""
    return open_store(store).verify_run(name, version, run_id, check_inputs=check_inputs)


def history(store: "Store | str | None", name: str, version: str | None = None) -> list[dict]:
    """Module-level form of :meth:`Store.history`."""
    return open_store(store).history(name, version)
