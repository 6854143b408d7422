"""A Prefect server lost mid-run: exit status 3 in bounded time, one line, nothing published."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fp16guard.cli.watchdog import ServerLost, ServerWatchdog
from conftest import wait_for_first_shard

REPO = Path(__file__).resolve().parents[1]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 — the stdlib's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


def test_watchdog_interrupts_the_run_when_the_server_stops_answering():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    start = None
    with pytest.raises(ServerLost, match="stopped answering") as caught:
        with ServerWatchdog(url, lost_s=1.0, check_s=0.2, hard_exit=False) as dog:
            try:
                time.sleep(1.0)  # healthy: nothing happens
                assert dog.lost is None
                server.shutdown()
                server.server_close()
                start = time.monotonic()
                while True:  # the "run": interrupted by the watchdog
                    time.sleep(0.05)
            except KeyboardInterrupt as exc:
                dog.check(exc)
                raise
    assert time.monotonic() - start < 5
    assert caught.value.exit_code == 3 and "\n" not in str(caught.value)


@pytest.mark.slow
def test_cli_run_whose_server_is_killed_exits_3_in_one_line_and_leaves_no_staging(demo_files, tmp_path):
    """Killed mid-run (after a shard finished, before anything was published): exit 3, exactly one
    line on stderr (Prefect's own ERROR lines folded into it), no run, no ``.staging/``."""
    from fp16guard.cli.server import LocalServer

    home = tmp_path / "home"
    server = LocalServer(home)
    state = server.ensure(timeout_s=240)  # a server that cannot start fails the test: nothing to skip for
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home), "FP16GUARD_SERVER_LOST_S": "5"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fp16guard.cli.main", "run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"],
         "--name", "demo", "--model-version", "1", "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO),
    )
    records = store / ".cache" / "stats" / "records"
    runs = store / "demo" / "1" / "runs"
    try:
        wait_for_first_shard(proc, store)
        # Mid-run: a shard finished, the process still works, nothing is published yet.
        assert proc.poll() is None and any(records.iterdir()) and not runs.exists(), "the server was not killed mid-run"
        os.kill(state["pid"], signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    assert proc.returncode == 3, err
    print(f"server lost -> exit {proc.returncode} after {took:.1f} s")
    assert took < 60
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("fp16guard: error: ") and "stopped answering" in lines[0]
    assert "ERROR" not in err and "Traceback" not in err
    assert not runs.exists() or not any(runs.iterdir()), "nothing is published"
    assert not (store / "demo" / "1" / ".staging").exists(), "no staging folder is left"


def test_prefect_errors_are_kept_off_stderr_and_their_first_cause_folded(capsys):
    """What a lost server makes Prefect print (ERROR lines of its background services through
    the ``prefect._internal`` stream handler, and the log shipper's direct writes, which obey
    ``logging.raiseExceptions``) stays off stderr; the first cause joins fp16guard's line."""
    import logging

    from fp16guard.cli.prefect_log import PrefectErrorFold

    internal = logging.getLogger("prefect._internal.concurrency.test-fold")
    handler = logging.StreamHandler()  # stderr, as Prefect's "debug" handler
    internal.addHandler(handler)
    internal.propagate = False
    ours = logging.getLogger("fp16guard.test-fold")
    ours.addHandler(handler)
    ours.propagate = False
    try:
        fold = PrefectErrorFold()
        with fold:
            assert logging.raiseExceptions is False
            internal.error("Service %r failed to process item %r", "EventsWorker", {"payload": "x" * 500})
            internal.error("Service %r failed to process item %r", "LogsWorker", "y")
            ours.warning("fp16guard: kept")
        assert logging.raiseExceptions is True
        internal.error("after the run")
    finally:
        internal.removeHandler(handler)
        ours.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.splitlines() == ["fp16guard: kept", "after the run"]
    assert fold.records == 2
    assert fold.first_cause() == "Service 'EventsWorker' failed to process item <dict>"

    dog = ServerWatchdog("http://127.0.0.1:9/api", lost_s=1.0, cause=fold.first_cause)
    dog.lost = dog.message()
    with pytest.raises(ServerLost) as caught:
        dog.check()
    assert str(caught.value).endswith("(Prefect's first error: Service 'EventsWorker' failed to process item <dict>)")
    assert "\n" not in str(caught.value)
