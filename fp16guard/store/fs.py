"""The store's file-system layer: one small interface over a local folder or any fsspec URL.

The store (``fp16guard.store.runs``) needs six things from a file system, and each has a stated
atomicity guarantee here:

- ``write_bytes(path, data)``: a reader sees the old object or the whole new one. Local: temporary
  file + fsync + rename (``fp16guard.io.atomic``). Object stores: one PUT, which is atomic.
- ``create_exclusive(path, data) -> bool``: create ``path`` with ``data`` only if it does not
  exist; returns False when it already did. Local: temporary file + ``os.link`` (fails if the
  target exists, so the file appears complete or not at all). S3: a conditional PUT
  (``If-None-Match: *``, through s3fs ``mode="create"``). Other fsspec back ends fall back to
  check-then-write, which two writers can race (documented limit; see ``exclusive_is_atomic``).
- ``publish_dir(local_dir, path)``: local only — rename a finished staging folder into place
  (atomic; fails if the target exists).
- ``put_file``, ``read_bytes``, ``sha256``, ``listdir``, ``exists``, ``files_under``, ``remove_tree``.
- ``lock(path)``: local only — an exclusive ``fcntl.flock`` on a lock file, so two processes on
  one host serialise release decisions. On object stores it is a no-op and correctness rests on
  ``create_exclusive``.

Paths passed in are '/'-joined and relative to the store root; the layer joins them to the root.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fp16guard.io import atomic
from fp16guard.errors import StoreError
from fp16guard.io.hashing import sha256_file

#: A staging folder untouched this long (seconds) belongs to a dead process: 2 days.
STALE_STAGING_S = 2 * 24 * 3600.0
_LOCK_TIMEOUT_S = 60.0  # a release decision takes milliseconds; a minute means a stuck process


def is_local(root: str) -> bool:
    """True for plain paths and ``file://`` URLs (atomic rename and flock are available)."""
    return "://" not in root or root.startswith("file://")


class LocalFS:
    """A store rooted in a local folder."""

    exclusive_is_atomic = True
    is_local = True

    def __init__(self, root: str):
        self.root = Path(root[len("file://") :] if root.startswith("file://") else root).absolute()
        self.url = str(self.root)

    def _p(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self._p(rel).exists()

    def read_bytes(self, rel: str) -> bytes:
        return self._p(rel).read_bytes()

    def write_bytes(self, rel: str, data: bytes) -> None:
        atomic.write_bytes(self._p(rel), data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        target = self._p(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)  # atomic, and refuses an existing target
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def sha256(self, rel: str) -> str:
        return sha256_file(self._p(rel))

    def put_file(self, local: str | os.PathLike, rel: str) -> None:
        with atomic.atomic_path(self._p(rel)) as tmp:
            shutil.copyfile(local, tmp)

    def listdir(self, rel: str) -> list[str]:
        p = self._p(rel)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []

    def files_under(self, rel: str) -> list[str]:
        base = self._p(rel)
        if not base.is_dir():
            return []
        return sorted(str(f.relative_to(base)) for f in base.rglob("*") if f.is_file())

    def remove_tree(self, rel: str) -> None:
        shutil.rmtree(self._p(rel), ignore_errors=True)

    def staging_dir(self, rel: str) -> Path:
        """Create and return a fresh local folder under ``rel`` (same file system as the runs).

        Side effect: removes staging folders there untouched for :data:`STALE_STAGING_S` (left by
        processes that were killed; a live run writes into its folder far more often).
        """
        parent = self._p(rel)
        parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in parent.glob("run-*"):
            try:
                if now - old.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:  # another process cleaned it first
                pass
        return Path(tempfile.mkdtemp(prefix="run-", dir=parent))

    def publish_dir(self, local_dir: Path, rel: str) -> None:
        """Rename ``local_dir`` to ``rel``; raise ``FileExistsError`` if ``rel`` exists."""
        target = self._p(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        # rename(2) would silently replace an *empty* target folder, so claim the name first:
        # mkdir is atomic and fails if anything (file or folder) already holds it.
        os.mkdir(target)
        try:
            os.rename(local_dir, target)
        except OSError:
            os.rmdir(target)
            raise
        _fsync_dir(target.parent)

    @contextmanager
    def lock(self, rel: str) -> Iterator[None]:
        path = self._p(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(f"store lock {path} is held by another process for over {_LOCK_TIMEOUT_S:.0f} s; expected it to be free") from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RemoteFS:
    """A store rooted at an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``)."""

    is_local = False

    def __init__(self, root: str, storage_options: dict | None = None):
        import fsspec

        protocol = root.split("://", 1)[0]
        options = dict(storage_options or {})
        if protocol in ("s3", "s3a"):
            endpoint = os.environ.get("FP16GUARD_S3_ENDPOINT_URL")
            if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
                options["endpoint_url"] = endpoint
            options.setdefault("use_listings_cache", False)  # other writers change the store under us
        try:
            self.fs, path = fsspec.core.url_to_fs(root, **options)
        except (ImportError, ValueError) as exc:
            raise StoreError(f"store {root!r} cannot be opened ({exc}); expected a folder or an fsspec URL whose package is installed (s3fs for s3://)") from None
        self.root = path.rstrip("/")
        self.url = root.rstrip("/")
        # Only s3fs implements mode="create" as a server-side conditional PUT.
        self.exclusive_is_atomic = protocol in ("s3", "s3a")

    def _p(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self._p(rel))
        return self.fs.exists(self._p(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._p(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self._p(rel), data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        path = self._p(rel)
        if not self.exclusive_is_atomic:
            if self.exists(rel):
                return False
            self.fs.pipe_file(path, data)
            return True
        try:
            self.fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except OSError:
            # Some servers answer 412 without the condition name; s3fs then raises a plain OSError.
            if self.exists(rel):
                return False
            raise

    def sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(self._p(rel), "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def put_file(self, local: str | os.PathLike, rel: str) -> None:
        self.fs.put_file(str(local), self._p(rel))

    def listdir(self, rel: str) -> list[str]:
        path = self._p(rel)
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""})

    def files_under(self, rel: str) -> list[str]:
        base = self._p(rel)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        prefix = self.fs._strip_protocol(base).rstrip("/") + "/"
        return sorted(f[len(prefix) :] for f in found if f.startswith(prefix))

    def remove_tree(self, rel: str) -> None:
        try:
            self.fs.rm(self._p(rel), recursive=True)
        except FileNotFoundError:
            pass

    @contextmanager
    def lock(self, rel: str) -> Iterator[None]:
        yield  # object stores: correctness rests on create_exclusive (see module docstring)


def open_fs(root: str, storage_options: dict | None = None) -> LocalFS | RemoteFS:
    """Return the file-system layer for a store root (folder, ``file://`` or other fsspec URL)."""
    return LocalFS(root) if is_local(root) else RemoteFS(root, storage_options)
