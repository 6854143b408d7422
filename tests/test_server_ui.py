"""The local server's UI link opens (issue 19, item 1): a stable port per Prefect home, and a UI
that is told the API URL it really serves.

The port choice is unit-tested without a server. The slow test starts a real server in a fresh
Prefect home (20-60 s), runs a flow against it, checks ``/ui-settings`` and, where Debian's
``chromium`` is installed, opens the flow-run URL headless and finds the run's name on the page.
The test points the server's "default port" at a free port of its own instead of 4200, so it
never takes the port of a user's server on a shared machine; the logic is the same.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

import fp16guard.cli.server as server
from fp16guard.errors import ConfigError, EnvironmentFailure


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hold(port: int) -> socket.socket:
    """Listen on 127.0.0.1:``port`` (another program using it) until closed."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(1)
    return s


def test_port_choice_default_then_kept(tmp_path, monkeypatch):
    monkeypatch.delenv(server.PORT_ENV, raising=False)
    default = _free_port()
    monkeypatch.setattr(server, "DEFAULT_PORT", default)
    local = server.LocalServer(tmp_path / "home")
    assert local.kept_port() is None and local.choose_port() == default  # first time: the default, when free

    busy = _hold(default)
    try:
        chosen = local.choose_port()
        assert chosen != default and server._port_free(chosen)  # the default is taken: a free one
    finally:
        busy.close()

    kept = _free_port()
    local.home.mkdir(parents=True)
    local.port_path.write_text(f"{kept}\n")
    assert local.kept_port() == kept and local.choose_port() == kept  # the kept port wins over the default
    busy = _hold(kept)
    try:
        assert local.choose_port() != kept  # moves only when another program holds it
    finally:
        busy.close()


def test_pinned_port(tmp_path, monkeypatch):
    local = server.LocalServer(tmp_path / "home")
    port = _free_port()
    monkeypatch.setenv(server.PORT_ENV, str(port))
    assert local.choose_port() == port
    monkeypatch.setenv(server.PORT_ENV, "http")
    with pytest.raises(ConfigError, match="expected a port number"):
        local.choose_port()
    busy = _hold(port)
    try:
        monkeypatch.setenv(server.PORT_ENV, str(port))
        with pytest.raises(EnvironmentFailure, match="in use by another program"):
            local.choose_port()
    finally:
        busy.close()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


@pytest.mark.slow
def test_printed_flow_run_link_opens(tmp_path, monkeypatch):
    import httpx

    monkeypatch.delenv(server.PORT_ENV, raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    default = _free_port()
    monkeypatch.setattr(server, "DEFAULT_PORT", default)
    local = server.LocalServer(tmp_path / "home")
    busy = _hold(default)  # the default port is taken: the server must choose one, and keep it
    try:
        state = local.ensure(timeout_s=240)
    finally:
        busy.close()
    try:
        port = state["port"]
        assert port != default and local.kept_port() == port
        settings = httpx.get(f"{state['ui_url']}/ui-settings", timeout=30).json()
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api" == state["api_url"]

        # A restart keeps the port (links stored in manifests stay valid), though the default is free now.
        local.stop()
        state = local.ensure(timeout_s=240)
        assert state["port"] == port
        assert httpx.get(f"{state['ui_url']}/ui-settings", timeout=30).json()["api_url"] == state["api_url"]

        # A flow run, and its link built as `fp16guard run` prints it (cli/commands/run.py).
        from prefect import flow
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

        name = f"ui-probe-{uuid.uuid4().hex[:8]}"
        seen: dict = {}

        def _announce(f, flow_run, s) -> None:
            seen["url"] = f"{PREFECT_UI_URL.value().rstrip('/')}/runs/flow-run/{flow_run.id}"

        @flow(name="fp16guard-ui-probe", flow_run_name=name, on_running=[_announce])
        def probe() -> int:
            return 1

        with temporary_settings({PREFECT_API_URL: state["api_url"]}):
            probe()
        url = seen["url"]
        assert url.startswith(f"http://127.0.0.1:{port}/runs/flow-run/")
        # The server behind the printed link tells its UI the API it serves.
        assert httpx.get(url.split("/runs/")[0] + "/ui-settings", timeout=30).json()["api_url"] == state["api_url"]

        browser = _chromium()
        if browser is None:
            pytest.skip("chromium not installed (Debian: apt-get install -y chromium); /ui-settings was checked")
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000", "--dump-dom", url]
        page = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
        assert name in page, page[-2000:]
        assert "Can't connect to Server API" not in page
    finally:
        local.stop()
