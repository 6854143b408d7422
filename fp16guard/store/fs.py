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

Failures of the environment are one line each: an ``OSError`` other than "not found" / "exists"
(read-only file system, disk full, a path that is a file, permission denied, a network error of
an object store) becomes :class:`StoreIOError` (an ``EnvironmentFailure``, exit status 3) naming
the path, what was being done and the cause. A local store never follows a symbolic link out of
its root (:class:`StoreError`). Staging folders record their owner (pid, host, process start) and
are swept as soon as that process is gone; files and folders the store publishes are readable
per the umask (``mkstemp``/``mkdtemp`` would leave them 0600/0700).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fp16guard.errors import EnvironmentFailure, StoreError
from fp16guard.io import atomic
from fp16guard.io.hashing import sha256_file
from fp16guard.io.urls import fsspec_options, is_remote, local_path, protocol

__all__ = [
    "LocalFS", "RemoteFS", "StoreIOError", "UnsafeLink", "open_fs", "is_local", "run_files", "io_errors", "describe_os_error",
    "new_work_dir", "sweep_work_dirs", "STALE_STAGING_S", "OWNER_FILE", "ENVIRONMENT_ERRNOS",
]

#: A staging folder with no owner record (or another host's) untouched this long (seconds) is
#: taken as abandoned: 2 days. Folders whose owner ran on this host go as soon as it is gone.
STALE_STAGING_S = 2 * 24 * 3600.0
#: File in a staging / temporary run folder naming the process that owns it.
OWNER_FILE = ".owner.json"
_LOCK_TIMEOUT_S = 60.0  # a release decision takes milliseconds; a minute means a stuck process

_CAUSES = {
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder, not a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
}


#: errno values that mean "the environment failed" (not a bug, not bad input).
ENVIRONMENT_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOTDIR, errno.EACCES, errno.EPERM})


class StoreIOError(EnvironmentFailure):
    """The store could not be read or written (exit status 3); the message names the path."""


class UnsafeLink(StoreError):
    """A path in a local store leads out of it through a symbolic link; it is never followed."""


def describe_os_error(exc: BaseException) -> str:
    """``no space left on the device [ENOSPC]``: a short cause for one-line messages."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in _CAUSES:
        return f"{_CAUSES[code]} [{errno.errorcode.get(code, code)}]"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{text} [{errno.errorcode.get(code, code)}]" if isinstance(code, int) else f"{type(exc).__name__}: {text}"


@contextmanager
def io_errors(action: str, where: str | os.PathLike) -> Iterator[None]:
    """Turn an environment ``OSError`` inside the block into :class:`StoreIOError`.

    "Not found" and "already exists" pass through unchanged: callers use them to decide (a
    missing run, a taken run id). So do ``StoreError`` and other ``EnvironmentFailure``.
    """
    try:
        yield
    except (FileNotFoundError, FileExistsError, StoreError, EnvironmentFailure):
        raise
    except OSError as exc:
        raise StoreIOError(f"cannot {action} {where}: {describe_os_error(exc)}") from None


def _remote(action: str):
    """Method decorator for :class:`RemoteFS`: an error of the object store or the network
    (``OSError``, botocore/aiohttp errors) becomes :class:`StoreIOError` naming the URL."""
    import functools

    def wrap(method):
        @functools.wraps(method)
        def inner(self, rel, *args, **kwargs):
            try:
                return method(self, rel, *args, **kwargs)
            except (FileNotFoundError, FileExistsError, StoreError, EnvironmentFailure):
                raise
            except Exception as exc:
                if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "fsspec"):
                    raise StoreIOError(f"cannot {action} {self._p(rel) if rel is not None else self.url}: {describe_os_error(exc)}") from None
                raise

        return inner

    return wrap


def is_local(root: str) -> bool:
    """True for plain paths and ``file://`` URLs (atomic rename and flock are available)."""
    return not is_remote(root)


def _umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _share(path: Path) -> None:
    """Give ``path`` (a file or a whole folder) the permissions a plain ``open``/``mkdir`` would
    have had under the umask: temporary-file helpers create 0600 files and 0700 folders, which
    other users of a shared store could not read."""
    mask = _umask()
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            os.chmod(folder, 0o777 & ~mask)
            for name in files:
                full = os.path.join(folder, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o666 & ~mask)
    elif path.exists() and not path.is_symlink():
        os.chmod(path, 0o666 & ~mask)


def run_files(root: Path) -> list[str]:
    """Relative '/'-joined paths of the regular files under ``root`` (a local folder), skipping
    names that start with '.' and symbolic links (a run never publishes a link)."""
    root = Path(root)
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            full = Path(folder) / name
            if not name.startswith(".") and full.is_file() and not full.is_symlink():
                out.append(full.relative_to(root).as_posix())
    return sorted(out)


# ------------------------------------------------------------------ work folders with owners
def _owner_record() -> dict:
    from fp16guard.store.locks import _proc_start

    return {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()), "created_at": time.time()}


def new_work_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """Create a fresh folder ``<parent>/<prefix>XXXX`` (permissions per umask) holding an owner
    record, after sweeping abandoned ones there (see :func:`sweep_work_dirs`)."""
    parent = Path(parent)
    with io_errors("create a staging folder in", parent):
        parent.mkdir(parents=True, exist_ok=True)
        sweep_work_dirs(parent, prefix)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        os.chmod(path, 0o777 & ~_umask())
        (path / OWNER_FILE).write_text(json.dumps(_owner_record()))
    return path


def sweep_work_dirs(parent: str | os.PathLike, prefix: str, now: float | None = None) -> list[Path]:
    """Remove the ``<prefix>*`` folders under ``parent`` whose owner is gone: its process ran on
    this host and no longer exists; or, with no owner record or another host's, untouched for
    :data:`STALE_STAGING_S`. Returns the folders removed. Errors are ignored (another process
    may sweep the same folder)."""
    from fp16guard.store.locks import process_alive

    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = []
    for old in Path(parent).glob(f"{prefix}*"):
        try:
            if not old.is_dir() or old.is_symlink():
                continue
            try:
                owner = json.loads((old / OWNER_FILE).read_text())
            except (OSError, ValueError):
                owner = None
            if isinstance(owner, dict) and owner.get("host") == host and isinstance(owner.get("pid"), int):
                gone = not process_alive(owner["pid"], owner.get("proc_start"))
            else:
                gone = now - old.stat().st_mtime > STALE_STAGING_S
            if gone:
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old)
        except OSError:  # another process cleaned it first, or it is not ours to read
            continue
    return removed


class LocalFS:
    """A store rooted in a local folder."""

    exclusive_is_atomic = True
    is_local = True

    def __init__(self, root: str):
        self.root = Path(local_path(root)).absolute()
        self.url = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreIOError(f"cannot use the store {self.root}: it is a file, not a folder; expected a folder (or a path where one can be created)")
        self._real_root = os.path.realpath(self.root)

    def _p(self, rel: str) -> Path:
        """The path of ``rel``; refuses one that leads out of the store through a symbolic link."""
        path = self.root / rel
        real = os.path.realpath(path)
        if real != self._real_root and not real.startswith(self._real_root.rstrip(os.sep) + os.sep):
            raise UnsafeLink(f"{path} leads out of the store (to {real}) through a symbolic link; the store never follows links out of itself — remove the link")
        return path

    def exists(self, rel: str) -> bool:
        with io_errors("read", self.root / rel):
            return self._p(rel).exists()

    def read_bytes(self, rel: str) -> bytes:
        with io_errors("read", self.root / rel):
            return self._p(rel).read_bytes()

    def write_bytes(self, rel: str, data: bytes) -> None:
        with io_errors("write", self.root / rel):
            target = self._p(rel)
            atomic.write_bytes(target, data)
            _share(target)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        with io_errors("write", self.root / rel):
            target = self._p(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                _share(Path(tmp))
                try:
                    os.link(tmp, target)  # atomic, and refuses an existing target
                except FileExistsError:
                    return False
                return True
            finally:
                os.unlink(tmp)

    def sha256(self, rel: str) -> str:
        with io_errors("read", self.root / rel):
            return sha256_file(self._p(rel))

    def put_file(self, local: str | os.PathLike, rel: str) -> None:
        with io_errors("write", self.root / rel):
            target = self._p(rel)
            with atomic.atomic_path(target) as tmp:
                shutil.copyfile(local, tmp)
            _share(target)

    def listdir(self, rel: str) -> list[str]:
        with io_errors("list", self.root / rel):
            p = self._p(rel)
            return sorted(c.name for c in p.iterdir()) if p.is_dir() else []

    def files_under(self, rel: str) -> list[str]:
        """Every file under ``rel`` (relative '/'-joined paths), symbolic links included as
        entries (never followed), so an audit sees a link that was planted in a run."""
        with io_errors("list", self.root / rel):
            base = self._p(rel)
            if not base.is_dir():
                return []
            out = []
            for folder, dirs, files in os.walk(base):  # os.walk does not follow links
                for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                    out.append(Path(folder, name).relative_to(base).as_posix())
            return sorted(out)

    def is_link(self, rel: str) -> bool:
        """True when ``rel`` itself is a symbolic link."""
        return os.path.islink(self.root / rel)

    def remove_tree(self, rel: str) -> None:
        shutil.rmtree(self._p(rel), ignore_errors=True)

    def staging_dir(self, rel: str) -> Path:
        """Create and return a fresh local folder under ``rel`` (same file system as the runs),
        holding an owner record (:data:`OWNER_FILE`).

        Side effect: removes staging folders there whose owner process is gone (see
        :func:`sweep_work_dirs`).
        """
        return new_work_dir(self._p(rel), "run-")

    def publish_dir(self, local_dir: Path, rel: str) -> None:
        """Rename ``local_dir`` to ``rel``; raise ``FileExistsError`` if ``rel`` exists.

        Its owner record is removed and permissions set per umask first."""
        with io_errors("publish the run folder", self.root / rel):
            target = self._p(rel)
            (Path(local_dir) / OWNER_FILE).unlink(missing_ok=True)
            _share(Path(local_dir))
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
        with io_errors("create the lock", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "a+b")
        with fh:
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

        scheme = protocol(root)
        # The endpoint and listing rules shared with shards by URL (other writers change the store).
        options = fsspec_options(root, storage_options)
        try:
            self.fs, path = fsspec.core.url_to_fs(root, **options)
        except (ImportError, ValueError) as exc:
            raise StoreError(f"store {root!r} cannot be opened ({exc}); expected a folder or an fsspec URL whose package is installed (s3fs for s3://)") from None
        self.root = path.rstrip("/")
        self.url = root.rstrip("/")
        # Only s3fs implements mode="create" as a server-side conditional PUT.
        self.exclusive_is_atomic = scheme in ("s3", "s3a")

    def _p(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    @_remote("read")
    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self._p(rel))
        return self.fs.exists(self._p(rel))

    @_remote("read")
    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._p(rel))

    @_remote("write")
    def write_bytes(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self._p(rel), data)

    @_remote("write")
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

    @_remote("read")
    def sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(self._p(rel), "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def put_file(self, local: str | os.PathLike, rel: str) -> None:
        self._upload(rel, local)

    @_remote("upload")
    def _upload(self, rel: str, local: str | os.PathLike) -> None:
        self.fs.put_file(str(local), self._p(rel))

    @_remote("list")
    def listdir(self, rel: str) -> list[str]:
        path = self._p(rel)
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""})

    @_remote("list")
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
