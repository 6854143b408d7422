"""The shared local Prefect server: started once, reused, stopped; failures are exit status 3.

These start real ``prefect server start`` processes in a temporary Prefect home and stop them
before the test ends (the session server of conftest.py is not touched).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from fp16guard.cli.main import main
from fp16guard.cli.server import LocalServer, healthy
from fp16guard.errors import EnvironmentFailure


def _processes_with_home(home: Path) -> list[int]:
    """Pids of live processes whose environment names ``home`` as PREFECT_HOME (Linux only)."""
    needle = f"PREFECT_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find server processes")


def test_start_failure_is_environment_failure_and_leaves_no_process(tmp_path):
    server = LocalServer(tmp_path / "home")
    with pytest.raises(EnvironmentFailure, match=r"did not answer within 0\.3 s") as info:
        server.ensure(timeout_s=0.3)
    assert "\n" not in str(info.value)
    assert server.state() is None
    deadline = time.monotonic() + 5
    while _processes_with_home(server.home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_with_home(server.home) == []


@pytest.mark.slow
def test_second_use_reuses_the_server_and_stop_ends_it(tmp_path, capsys):
    home = tmp_path / "home"
    server = LocalServer(home)
    try:
        first = server.ensure(timeout_s=180)
        assert healthy(first["api_url"])
        started = time.monotonic()
        second = LocalServer(home).ensure(timeout_s=180)
        assert second == first  # same process and URL, not a new server
        assert time.monotonic() - started < 15
        with temporary_settings({PREFECT_HOME: str(home)}):
            assert main(["server", "status"]) == 0
        assert str(first["pid"]) in capsys.readouterr().out
    finally:
        server.stop()
    assert not healthy(first["api_url"], timeout_s=2)
    with pytest.raises(ProcessLookupError):
        os.kill(first["pid"], 0)
    assert server.state() is None


def test_cli_run_with_unreachable_api_exits_3_in_one_line(demo_files, tmp_path, capsys):
    store = tmp_path / "store"
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        code = main(["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], "--name", "m", "--model-version", "1", "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0] and "does not answer" in lines[0], err
    assert not store.exists() or not any(store.rglob("*"))


def test_unusable_prefect_home_is_environment_failure(tmp_path):
    home = tmp_path / "home"
    home.write_text("a file where the Prefect home should be")
    with pytest.raises(EnvironmentFailure, match="cannot start the local Prefect server"):
        LocalServer(home).ensure(timeout_s=5)
