"""The Prefect server a CLI run talks to: the configured one, or one shared local server.

Without ``PREFECT_API_URL`` (environment or active Prefect profile), Prefect would start an
embedded server inside every ``fp16guard run``: ~20-30 s each time on 2 cores, and a
``RuntimeError`` when that takes longer than its 20 s limit on a busy machine (docs/FACTS.md #14).
Instead, the first run starts ``prefect server start`` as a detached background process on
127.0.0.1; its URL and pid are recorded in ``<PREFECT_HOME>/fp16guard-server.json`` and later
runs reuse it after a health check (seconds), so the runs stay visible in its UI.
``fp16guard server status|start|stop`` shows, starts and stops it.

**A stable port, so printed and stored links keep working.** The server of a Prefect home
listens on the port it used last (kept in ``<PREFECT_HOME>/fp16guard-server-port``, which
``stop`` leaves in place); the first time, on 4200 when that is free, else on a free port chosen
then and kept. ``$FP16GUARD_SERVER_PORT`` pins a port. Only when the kept port has been taken by
another program does the server move (and the new port is kept). The UI is told the API URL it
really serves (``PREFECT_UI_API_URL``, ``PREFECT_SERVER_API_HOST``/``PORT``), so the flow-run
link a run prints opens a page that reaches its API.

One server per Prefect home: the server keeps its database in ``PREFECT_HOME`` (default
``~/.prefect``), so a fresh ``PREFECT_HOME`` gets a fresh server. Starting is serialised by an
``flock`` on ``<PREFECT_HOME>/fp16guard-server.lock``: two runs started at once share one server.

A server that cannot be reached or started raises
:class:`fp16guard.errors.EnvironmentFailure` (exit status 3, one line). POSIX only (``flock``,
process groups), like the rest of fp16guard's local store locking.

Prefect is imported lazily (only to read the configured API URL and Prefect home): this module
belongs to the CLI, never to the library.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from fp16guard.errors import EnvironmentFailure

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_STARTUP_TIMEOUT_S",
    "LocalServer",
    "configured_api_url",
    "ensure_api",
    "healthy",
    "local_server",
    "startup_timeout",
]

#: Seconds a new local server may take to answer its health check. A cold start (fresh Prefect
#: home: database created and migrated) took 22-30 s on the 2-core VM under light load and
#: under 60 s with four CPU-bound processes beside it (2026-12-01); Prefect's own limit is 20 s.
DEFAULT_STARTUP_TIMEOUT_S = 120.0
#: Environment variable overriding :data:`DEFAULT_STARTUP_TIMEOUT_S` (seconds).
TIMEOUT_ENV = "FP16GUARD_SERVER_STARTUP_TIMEOUT"
STATE_FILE = "fp16guard-server.json"
#: The port the server of this Prefect home uses, kept across stops and restarts.
PORT_FILE = "fp16guard-server-port"
#: Prefect's own default port: a home without a kept port asks for it first.
DEFAULT_PORT = 4200
#: Environment variable pinning the port (1-65535).
PORT_ENV = "FP16GUARD_SERVER_PORT"
LOG_FILE = "fp16guard-server.log"
LOCK_FILE = "fp16guard-server.lock"


def startup_timeout() -> float:
    """The start-up timeout in seconds: ``$FP16GUARD_SERVER_STARTUP_TIMEOUT`` or 120.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    from fp16guard.settings import env_seconds

    return env_seconds(TIMEOUT_ENV, DEFAULT_STARTUP_TIMEOUT_S)


def healthy(api_url: str, timeout_s: float = 10.0) -> bool:
    """True when ``GET <api_url>/health`` answers 2xx within ``timeout_s`` seconds."""
    import httpx

    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s).is_success
    except httpx.HTTPError:
        return False


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment or the active Prefect profile, else None."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def prefect_home() -> Path:
    """The Prefect home folder (``$PREFECT_HOME`` or the profile's; default ``~/.prefect``)."""
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()).expanduser()


class LocalServer:
    """The shared local Prefect server of one Prefect home.

    Args:
        home: the Prefect home; its database and the state, log and lock files live there.
    """

    def __init__(self, home: Path):
        self.home = Path(home)
        self.state_path = self.home / STATE_FILE
        self.log_path = self.home / LOG_FILE
        self.lock_path = self.home / LOCK_FILE
        self.port_path = self.home / PORT_FILE

    def kept_port(self) -> int | None:
        """The port this home's server used last (None: never started, or the file is unreadable)."""
        try:
            port = int(self.port_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def choose_port(self) -> int:
        """The port to start on: ``$FP16GUARD_SERVER_PORT``; else the kept port when free; else
        4200 when no port is kept and it is free; else a free port (kept once the server answers).

        Raises:
            ConfigError: ``$FP16GUARD_SERVER_PORT`` is not a port number.
            EnvironmentFailure: the pinned port is in use.
        """
        pinned = os.environ.get(PORT_ENV)
        if pinned:
            from fp16guard.errors import ConfigError

            try:
                port = int(pinned)
                if not 0 < port < 65536:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{PORT_ENV}={pinned!r} is not accepted; expected a port number 1-65535") from None
            if not _port_free(port):
                raise EnvironmentFailure(f"{PORT_ENV}={port}: the port is in use by another program; expected a free port, or unset {PORT_ENV}")
            return port
        preferred = self.kept_port() or DEFAULT_PORT
        return preferred if _port_free(preferred) else _free_port()

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict | None:
        """The recorded ``{"api_url", "ui_url", "pid", "port", "started_at"}``, or None."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and {"api_url", "pid"} <= state.keys() else None

    def running(self, patience_s: float = 0.0) -> dict | None:
        """The state if its process is alive, is a Prefect server, and answers; else None.

        Args:
            patience_s: how long to keep asking a live server process that does not answer
                (a server busy on a loaded machine, or still starting), in seconds.
        """
        state = self.state()
        if not state:
            return None
        pid, deadline = int(state["pid"]), time.monotonic() + patience_s
        while _is_server_process(pid):
            if healthy(state["api_url"]):
                return state
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        return None

    # -- start / stop --------------------------------------------------------------------------

    def ensure(self, timeout_s: float | None = None) -> dict:
        """Return the running server's state, starting one first when none answers.

        Args:
            timeout_s: seconds a new server may take to answer (default :func:`startup_timeout`).

        Raises:
            EnvironmentFailure: the server did not start or answer within the timeout.
        """
        timeout_s = startup_timeout() if timeout_s is None else timeout_s
        state = self.running()
        if state:
            return state
        try:
            with self._locked(timeout_s):
                # Another run may have started it while we waited; a live server that is slow
                # to answer gets half a minute before it is replaced (other runs may use it).
                state = self.running(patience_s=30.0)
                if state:
                    return state
                self.stop()  # a recorded process that does not answer: replace it
                return self._start(timeout_s)
        except OSError as exc:  # the Prefect home is a file, read-only, full...
            raise EnvironmentFailure(
                f"cannot start the local Prefect server in {self.home} ({type(exc).__name__}: {exc}); expected a writable Prefect home, or set PREFECT_API_URL"
            ) from None

    def _start(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        try:
            return self._start_on(self.choose_port(), deadline, timeout_s)
        except _PortTaken as exc:
            if os.environ.get(PORT_ENV):
                raise EnvironmentFailure(f"{PORT_ENV}={exc.args[0]}: the port was taken by another program while the server started; expected a free port") from None
            # Another process bound the port between the check and the server's bind (two
            # Prefect homes starting at once): once more on a port nobody asked for.
            return self._start_on(_free_port(), deadline, timeout_s)

    def _start_on(self, port: int, deadline: float, timeout_s: float) -> dict:
        """Start the server on ``port``; wait until ``deadline`` (monotonic seconds) for it to answer."""
        api_url = f"http://127.0.0.1:{port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING_")}
        env.update(PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        env.pop("PREFECT_API_URL", None)
        # The UI asks /ui-settings where its API is; Prefect derives that from these settings,
        # not from --port, so without them every page points at :4200 (issue 19).
        env.update(PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port), PREFECT_UI_API_URL=api_url)
        for alias in ("PREFECT_SERVER_UI_API_URL", "PREFECT_UI_URL", "PREFECT_SERVER_UI_URL"):
            env.pop(alias, None)  # an inherited value would win over ours
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A session of its own: Ctrl-C on the run that started it does not stop the server.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, close_fds=True)
        state = {"api_url": api_url, "ui_url": f"http://127.0.0.1:{port}", "pid": proc.pid, "port": port, "started_at": time.time(), "log": str(self.log_path)}
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    if not _port_free(port):
                        raise _PortTaken(port)
                    raise EnvironmentFailure(
                        f"the local Prefect server exited with status {proc.returncode} while starting (log: {self.log_path}); set PREFECT_API_URL to a running server instead"
                    )
                # The answer must come from our server: another home's server may hold the port.
                if healthy(api_url, timeout_s=5.0) and proc.poll() is None and _serves_home(api_url, self.home):
                    _write_json(self.state_path, state)
                    from fp16guard.io.atomic import write_text

                    write_text(self.port_path, f"{port}\n")
                    return state
                time.sleep(0.5)
            raise EnvironmentFailure(
                f"the local Prefect server did not answer within {timeout_s:g} s (log: {self.log_path}); "
                f"raise {TIMEOUT_ENV} on a busy machine, or set PREFECT_API_URL to a running server"
            )
        except BaseException:
            # Timeout, Ctrl-C or a state file that cannot be written: a server nobody recorded
            # would run for ever, so it goes too.
            _terminate(proc.pid)
            raise

    def stop(self) -> bool:
        """Stop the recorded server (SIGTERM, then SIGKILL after 10 s) and forget it.

        Returns:
            True when a running server process was stopped.
        """
        state = self.state()
        stopped = False
        if state and _is_server_process(int(state["pid"])):
            _terminate(int(state["pid"]))
            stopped = True
        try:
            self.state_path.unlink()
        except FileNotFoundError:
            pass
        return stopped

    @contextmanager
    def _locked(self, timeout_s: float):
        """Hold the start-up lock (bounded wait: the start-up timeout plus 30 s)."""
        import fcntl

        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as fh:
            deadline = time.monotonic() + timeout_s + 30
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EnvironmentFailure(f"another process has been starting the local Prefect server for over {timeout_s + 30:g} s (lock {self.lock_path})") from None
                    time.sleep(0.5)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def local_server() -> LocalServer:
    """The shared local server of the current Prefect home."""
    return LocalServer(prefect_home())


def ensure_api(timeout_s: float | None = None) -> tuple[str, bool]:
    """The Prefect API URL this command will use, checked to answer.

    A configured ``PREFECT_API_URL`` must answer its health check; otherwise the shared local
    server is reused or started.

    Returns:
        ``(api_url, local)``: ``local`` is True for the shared local server, which the caller
        must install with ``prefect.settings.temporary_settings`` (Prefect reads its
        environment once, at import).

    Raises:
        EnvironmentFailure: no server answers (exit status 3).
    """
    url = configured_api_url()
    if url:
        answered = healthy(url, timeout_s=10.0)
        if not answered:
            time.sleep(1.0)  # one more try: a server restarting, or slow on a busy machine
            answered = healthy(url, timeout_s=10.0)
        if not answered:
            raise EnvironmentFailure(
                f"the Prefect API at {url} does not answer; expected a running server — start it, or unset PREFECT_API_URL to use a local one"
            )
        return url, False
    return local_server().ensure(timeout_s)["api_url"], True


# -- processes -------------------------------------------------------------------------------


class _PortTaken(Exception):
    """The server could not bind its port: another process took it after it was checked."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    """True when 127.0.0.1:``port`` can be bound as uvicorn binds it (SO_REUSEADDR, so a port
    left in TIME_WAIT by our own stopped server still counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _serves_home(api_url: str, home: Path) -> bool:
    """True when the server at ``api_url`` keeps its data in ``home`` (``GET /admin/settings``);
    True as well when that cannot be read (older servers): the health check then decides."""
    import httpx

    try:
        reply = httpx.get(f"{api_url.rstrip('/')}/admin/settings", timeout=5.0)
        served = reply.json().get("home") if reply.is_success else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return True
    if not served:
        return True
    try:
        return Path(served).expanduser().resolve() == home.expanduser().resolve()
    except OSError:
        return True


def _is_server_process(pid: int) -> bool:
    """True when ``pid`` is alive and (where /proc exists) runs ``prefect server start``.

    The command-line check keeps a recycled pid from being taken for the server (or killed).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: not ours to use or stop
    cmdline = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return b"prefect" in b" ".join(args) and b"server" in args and b"start" in args
    return True


def _terminate(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of ``pid`` (its own session), then SIGKILL after ``grace_s``."""
    def _signal(sig: int) -> bool:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            os.kill(pid, sig)
        return True

    if not _signal(signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
            if done:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.2)
    _signal(signal.SIGKILL)


def _write_json(path: Path, data: dict) -> None:
    from fp16guard.io.atomic import write_json

    write_json(path, data)
