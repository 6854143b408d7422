"""``fp16guard server status|start|stop``: the shared local Prefect server of this Prefect home.

``fp16guard run`` and ``demo`` start it on first use when ``PREFECT_API_URL`` is not set and
reuse it afterwards (see :mod:`fp16guard.cli.server`); this command shows where it is, starts it
ahead of time, or stops it. Exit 0; ``status`` exits 1 when no local server is running;
3 when it cannot be started.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``server`` command."""
    p = sub.add_parser(
        "server",
        help="show, start or stop the local Prefect server that runs share",
        description=(
            "Without PREFECT_API_URL, `fp16guard run` and `demo` start one Prefect server in the background on "
            "127.0.0.1 (a free port; database, state and log in $PREFECT_HOME, default ~/.prefect) and reuse it. "
            "status: print its URLs and pid (exit 1 when none runs); start: start it now; stop: stop it."
        ),
    )
    p.add_argument("action", choices=["status", "start", "stop"], help="what to do")
    p.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="seconds a starting server may take to answer (default $FP16GUARD_SERVER_STARTUP_TIMEOUT, else 120)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Carry out the action; see the module docstring for exit statuses."""
    import sys

    from fp16guard.cli.server import configured_api_url, local_server

    configured = configured_api_url()
    if configured:
        print(f"note: PREFECT_API_URL is set ({configured}); runs use that server, not the local one", file=sys.stderr)
    server = local_server()
    if args.action == "stop":
        print("stopped the local Prefect server" if server.stop() else "no local Prefect server was running")
        return 0
    state = server.ensure(args.timeout) if args.action == "start" else server.running()
    if not state:
        print(f"no local Prefect server is running (state: {server.state_path})")
        return 1
    print(f"local Prefect server: UI {state['ui_url']}  API {state['api_url']}  pid {state['pid']}  log {state.get('log', server.log_path)}")
    return 0
