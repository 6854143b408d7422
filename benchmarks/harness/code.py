"""Which fp16guard code a benchmark runs: the work tree, or a commit exported with ``git archive``
(so a long run measures committed code while the work tree is mid-edit)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["export_code", "worktree_label"]

REPO = Path(__file__).resolve().parents[2]


def export_code(rev: str, cache: Path) -> tuple[Path, str]:
    """``git archive REV`` of this repository into ``cache/code/<sha>`` (once per commit).

    Args:
        rev: any git revision (``HEAD``, a short sha).
        cache: the benchmarks' cache folder (``real_models.fetch.cache_dir()``).

    Returns:
        The folder and the short commit.
    """
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True, check=True).stdout.strip()
    dest = cache / "code" / sha
    if not (dest / ".done").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        (dest / ".done").write_text("")
    return dest, sha


def worktree_label() -> str:
    """The work tree's commit, and whether fp16guard/, flows/ or tasks/ differ from it."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "fp16guard", "flows", "tasks"],
                           capture_output=True, text=True).stdout.strip()
    return f"work tree at {commit}" + (" with uncommitted changes in fp16guard/, flows/ or tasks/" if dirty else " (clean)")
