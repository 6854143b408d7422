"""Store failures: I/O errors are one line with exit status 3, damaged records are findings,
links out of the store are never followed.

Read-only and full file systems are real (tmpfs mounts); where mounting is not permitted (an
unprivileged CI runner) those tests skip, saying so. Root ignores file permissions, so
``chmod`` cannot make a read-only store here.
"""

from __future__ import annotations

import errno
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from fixtures_s3 import commit_run, write_run_files

from fp16guard.cli.main import main as cli
from fp16guard.errors import EnvironmentFailure, StoreError
from fp16guard.store.audit import verify_run
from fp16guard.store.fs import StoreIOError, UnsafeLink
from fp16guard.store.runs import Store


@pytest.fixture()
def tmpfs(tmp_path):
    """A fresh 256 KiB tmpfs; yields its path, unmounted afterwards."""
    point = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); a real read-only/full file system is needed")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_store_path_that_is_a_file_is_exit_3_one_line(tmp_path, capsys):
    path = tmp_path / "store"
    path.write_text("not a folder")
    with pytest.raises(StoreIOError, match="is a file"):
        Store(str(path))
    code, out, err = _run_cli(capsys, "history", "m", "--store", str(path))
    assert code == 3
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_read_only_store_is_exit_3_and_leaves_nothing(tmpfs, tmp_path, capsys):
    store = Store(str(tmpfs / "store"))
    commit_run(store, "m", "1", "r1")
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode == 0
    with pytest.raises(StoreIOError) as caught:
        commit_run(store, "m", "1", "r2")
    message = str(caught.value)
    assert "read-only" in message and str(tmpfs) in message and "\n" not in message
    assert caught.value.exit_code == 3
    assert store.runs("m", "1") == ["r1"]
    # Reading still works on a read-only store.
    code, out, err = _run_cli(capsys, "verify-store", "m", "1", "--run", "r1", "--store", str(tmpfs / "store"))
    assert code == 0, err


def test_full_disk_commit_is_exit_3_and_leaves_no_run(tmpfs, tmp_path):
    store = Store(str(tmpfs / "store"))
    src = tmp_path / "outputs"
    src.mkdir()
    write_run_files(src, payload=b"x" * (512 * 1024))  # twice the file system
    with pytest.raises(StoreIOError) as caught:
        store.put_run("m", "1", src, verified=True, run_id="big")
    assert "no space left" in str(caught.value) and str(tmpfs) in str(caught.value)
    assert store.runs("m", "1") == []
    staging = tmpfs / "store" / "m" / "1" / ".staging"
    assert not staging.exists(), "the staging folder (and .staging/ itself) is removed"


def test_release_made_but_mirror_not_written_is_reported_as_released(tmp_path, monkeypatch):
    from fp16guard.store import fs as fs_module

    store = Store(str(tmp_path / "store"))
    commit_run(store, "m", "1", "r1")
    real = fs_module.atomic.write_bytes

    def full(target, data):
        # The disk fills after the release record was created, as release.json is rewritten.
        if str(target).endswith("release.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(target, data)

    monkeypatch.setattr(fs_module.atomic, "write_bytes", full)
    decision = store.release("m", "1", "r1")
    assert decision.released and "release.json not updated" in decision.reason
    assert store.current_release("m", "1")["run_id"] == "r1"


def test_release_record_that_cannot_be_written_is_not_a_release(tmp_path, monkeypatch):
    from fp16guard.store import fs as fs_module

    store = Store(str(tmp_path / "store"))
    commit_run(store, "m", "1", "r1")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs_module.os, "link", full)
    with pytest.raises(EnvironmentFailure, match="nothing was released"):
        store.release("m", "1", "r1")
    assert store.current_release("m", "1") is None


# ------------------------------------------------------------------------ damaged records
@pytest.fixture()
def damaged_store(tmp_path) -> tuple[Store, str]:
    root = tmp_path / "store"
    store = Store(str(root))
    for rid in ("good", "badstatus", "badmanifest"):
        commit_run(store, "m", "1", rid)
    store.release("m", "1", "good")
    runs = root / "m" / "1" / "runs"
    (runs / "badstatus" / "status.json").write_text("{not json")
    (runs / "badmanifest" / "manifest.json").write_text("[1, 2]")
    (root / "m" / "1" / "releases" / "000002.json").write_text("garbage")
    return store, str(root)


def test_verify_store_lists_damaged_records_exit_1(damaged_store, capsys):
    store, root = damaged_store
    for rid, expect in (("badstatus", "status.json of run m/1/badstatus is damaged"), ("badmanifest", "manifest.json of run m/1/badmanifest is damaged")):
        code, out, err = _run_cli(capsys, "verify-store", "m", "1", "--run", rid, "--store", root)
        assert code == 1, (out, err)
        assert expect in out and "release record m/1/releases/000002.json is damaged" in out
        assert "Traceback" not in err


def test_history_and_show_name_the_damaged_record_and_go_on(damaged_store, capsys):
    store, root = damaged_store
    code, out, err = _run_cli(capsys, "history", "m", "--store", root)
    assert code == 0, err
    assert "badstatus" in out and "damaged" in out and "good" in out and "RELEASED" in out
    assert "status.json of run m/1/badstatus is damaged" in err
    assert "releases/000002.json is damaged" in err
    code, out, err = _run_cli(capsys, "show", "m", "1", "--run", "badmanifest", "--store", root)
    assert code == 0, err
    assert "(not shown: manifest.json of run m/1/badmanifest is damaged" in out
    assert '"passed": true' in out  # verification.json is still shown
    code, out, err = _run_cli(capsys, "show", "m", "1", "--store", root)  # the release, despite the damaged record 2
    assert code == 0 and "run m/1/good: verified (current release)" in out


def test_new_release_numbers_skip_a_damaged_record(damaged_store):
    store, root = damaged_store
    commit_run(store, "m", "1", "later")
    decision = store.release("m", "1", "later", promote=True)
    assert decision.released and decision.record["seq"] == 3


# ------------------------------------------------------------------------ symbolic links
def test_show_and_verify_do_not_follow_a_link_out_of_the_store(tmp_path, capsys):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"secret": "outside"}))
    root = tmp_path / "store"
    store = Store(str(root))
    commit_run(store, "m", "1", "r")
    manifest = root / "m" / "1" / "runs" / "r" / "manifest.json"
    manifest.unlink()
    manifest.symlink_to(secret)
    code, out, err = _run_cli(capsys, "show", "m", "1", "--run", "r", "--store", str(root))
    assert code == 0 and "outside" not in out and "leads out of the store" in out
    problems = verify_run(store, "m", "1", "r")
    assert any("manifest.json" in p and "symbolic link" in p for p in problems)


def test_writes_refuse_a_link_out_of_the_store(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "store"
    root.mkdir()
    (root / "m").symlink_to(outside, target_is_directory=True)
    store = Store(str(root))
    with pytest.raises(UnsafeLink, match="leads out of the store"):
        commit_run(store, "m", "1", "r")
    assert not any(outside.rglob("*")), "nothing was written outside the store"
    assert issubclass(UnsafeLink, StoreError)


# ------------------------------------------------------------------------ S3 (real moto server)
from fixtures_s3 import s3_root, s3_server  # noqa: E402,F401 (pytest fixtures)


def test_s3_temp_folders_of_dead_runs_are_swept(s3_root):
    import sys
    import tempfile

    from fp16guard.store.fs import OWNER_FILE
    from fp16guard.store.runs import TEMP_PREFIX

    store = Store(s3_root)
    dead = store.stage_run("m", "1")
    assert dead.path.parent == Path(tempfile.gettempdir()) and dead.path.name.startswith(TEMP_PREFIX)
    owner = json.loads((dead.path / OWNER_FILE).read_text())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (dead.path / OWNER_FILE).write_text(json.dumps({**owner, "pid": proc.pid, "proc_start": None}))
    with store.stage_run("m", "1", "r") as live:
        write_run_files(live.path)
        live.commit(verified=True)
    assert not dead.path.exists(), "the dead run's temporary folder is swept"
    assert not live.path.exists(), "a committed run's temporary folder is removed"
    assert store.runs("m", "1") == ["r"] and verify_run(store, "m", "1", "r") == []


def test_unreachable_s3_store_is_exit_3_one_line(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("FP16GUARD_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, out, err = _run_cli(capsys, "history", "m", "--store", "s3://nobucket/store")
    assert code == 3, err
    assert err.count("\n") == 1 and "nobucket/store" in err and "cannot list" in err
    assert "Traceback" not in err
