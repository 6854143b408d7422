"""``fp16guard register``: announce a new model version to the Prefect server.

Emits the ``fp16guard.model.registered`` event (contract: ``fp16guard.events``); the
``fp16guard-on-registration`` deployment triggers on it and calibrates, builds and verifies the
model on a GPU worker. Prints the event id on stdout (one line), so a release script can record
it and later find the run whose manifest names it.

Inputs are checked before anything is sent: bad name, version or threshold, a missing local
model, or calibration/holdout locations that hold no shard exit with status 2 and send nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

from fp16guard.cli.common import add_model_version


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``register`` command to the CLI."""
    p = subparsers.add_parser(
        "register",
        help="emit a model-registration event (starts a calibration run on a GPU worker)",
        description="Emit a fp16guard.model.registered event to the Prefect server at $PREFECT_API_URL (else the running local fp16guard server); print its id.",
    )
    p.add_argument("model", nargs="?", help="FP32 ONNX model path (before or after the options; made absolute; must be readable by the workers, e.g. on a shared file system)")
    p.add_argument("--name", required=True, help="model name in the store")
    add_model_version(p, required=True)
    p.add_argument("--calib", nargs="+", action="extend", required=True, help="calibration data locations (.npz, folders, globs, Polygraphy JSON)")
    p.add_argument("--holdout", nargs="+", action="extend", required=True, help="holdout data locations, same formats")
    p.add_argument("--threshold", type=float, default=None, help="FP32 threshold on max |x| in (0, 65504] (default: the flow's, 10000)")
    p.add_argument("--store", default=None, help="store root for the run (default: the worker's $FP16GUARD_STORE)")
    p.add_argument("--no-check", action="store_true", help="do not check that local paths exist here (they exist only on the workers)")
    p.add_argument("--dry-run", action="store_true", help="print the event as JSON instead of sending it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the inputs, emit the event, print its id. Returns 0."""
    from fp16guard.cli.common import model_version, take_model_argument
    from fp16guard.events import registration_event

    args.model_version = model_version(args)
    spec = registration_event(
        take_model_argument(args),
        args.name,
        args.model_version,
        args.calib,
        args.holdout,
        threshold=args.threshold,
        store=args.store,
        check_local=not args.no_check,
    )
    if args.dry_run:
        print(json.dumps({"event": spec.event, "resource": spec.resource, "payload": spec.payload}, indent=2))
        return 0
    event_id = emit(spec)
    print(event_id)
    print(f"fp16guard: emitted {spec.event} for {args.name}/{args.model_version}", file=sys.stderr)
    return 0


def emit(spec) -> str:
    """Send one event to the Prefect server and return its id.

    Sends synchronously over the events websocket (not through the background worker that
    ``prefect.events.emit_event`` uses), so a short-lived CLI process cannot exit before the
    event left, and a server that cannot be reached is an error here, not a silent loss.

    Args:
        spec: a :class:`fp16guard.events.EventSpec`.

    Raises:
        ConfigError: ``PREFECT_API_URL`` is not set and no local server is running.
        EnvironmentFailure: the server cannot be reached (exit status 3).
    """
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient
    from prefect.settings import PREFECT_API_URL

    from fp16guard.errors import ConfigError, EnvironmentFailure

    api_url = PREFECT_API_URL.value()
    if not api_url:
        # The shared local server (fp16guard server / the first run) when one is running: its
        # port is stable per Prefect home, so the event reaches the deployments served there.
        from fp16guard.cli.server import local_server

        state = local_server().running(patience_s=5.0)
        api_url = state["api_url"] if state else None
    if not api_url:
        raise ConfigError("PREFECT_API_URL is not set and no local fp16guard server is running; expected the URL of the Prefect server that runs the fp16guard deployments, e.g. http://127.0.0.1:4200/api, or `fp16guard server start`")
    event = Event(event=spec.event, resource=spec.resource, related=spec.related, payload=spec.payload)

    async def _send() -> None:
        # Few reconnection attempts: a wrong URL should fail within seconds, not minutes.
        async with PrefectEventsClient(api_url=api_url, reconnection_attempts=2) as client:
            await client.emit(event)

    try:
        asyncio.run(_send())
    except (OSError, TimeoutError, ConnectionError) as exc:
        raise EnvironmentFailure(f"cannot send the event to {api_url} ({type(exc).__name__}: {exc}); expected a running Prefect server") from None
    except Exception as exc:  # websockets raises its own exception types on handshake failures
        if type(exc).__module__.startswith("websockets"):
            raise EnvironmentFailure(f"cannot send the event to {api_url} ({type(exc).__name__}: {exc}); expected a running Prefect server") from None
        raise
    return str(event.id)
