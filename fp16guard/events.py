"""The event contract between a model-release pipeline and fp16guard's deployments.

This module only *builds and checks* events (plain dicts); it never imports Prefect. Sending
happens in ``fp16guard register`` (``fp16guard.cli.commands.register``) and in the nightly flow.

**Model registered** — emitted by a release pipeline (or ``fp16guard register``) when a new
model version needs a verified FP16 artifact. The ``fp16guard-on-registration`` deployment
(``deployments/prefect.yaml``) triggers on it and maps the payload onto the flow's
:class:`~fp16guard.settings.RunParameters`.

- event: ``fp16guard.model.registered``
- resource: ``{"prefect.resource.id": "fp16guard.model.<name>/<version>",
  "prefect.resource.name": "<name>", "fp16guard.model.name": "<name>",
  "fp16guard.model.version": "<version>"}``
- payload (JSON):

  ======================  ============  =====================================================
  key                     type          meaning
  ======================  ============  =====================================================
  ``contract``            int           contract version, currently 1
  ``model``               str           FP32 ONNX model: absolute path readable by the workers
  ``name``, ``version``   str           store name and version (letters, digits, ``._-``)
  ``calib``               list[str]     calibration data locations (npz files/folders/globs,
                                        Polygraphy JSON), absolute paths readable by the workers
  ``holdout``             list[str]     holdout data locations, same formats
  ``threshold``           float         optional; FP32 threshold on max |x|, (0, 65504]
  ``store``               str           optional; store root; default: the worker's
                                        ``FP16GUARD_STORE``
  ======================  ============  =====================================================

The run started by the trigger receives ``params.trigger_event = {id, event, resource}`` of the
triggering event, and records it in its manifest (lineage).

**Release regressed** — emitted by the nightly flow when a released artifact no longer passes
verification on the newest holdout data.

- event: ``fp16guard.release.regressed``
- resource: ``{"prefect.resource.id": "fp16guard.release.<name>/<version>", ...}`` (labels as
  above)
- payload: ``name``, ``version``, ``run_id`` (the released run), ``reason`` (one line),
  ``holdout`` (locations checked), ``recalibration`` (flow run id of the re-calibration, or
  null).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence


from fp16guard.errors import ConfigError, DataError, ModelError
from fp16guard.settings import PlanSettings, RunParameters, check_segment, parse_parameters

#: Event a release pipeline emits when a model version needs an FP16 artifact.
MODEL_REGISTERED = "fp16guard.model.registered"
#: Event the nightly flow emits when a released artifact fails verification.
RELEASE_REGRESSED = "fp16guard.release.regressed"
#: Version of the payload layout below; bumped on incompatible changes.
CONTRACT_VERSION = 1

_REQUIRED = ("model", "name", "version", "calib", "holdout")
_OPTIONAL = ("contract", "threshold", "store")


@dataclass(frozen=True)
class EventSpec:
    """An event ready to send: the keyword arguments of ``prefect.events.emit_event``.

    Attributes:
        event: the event name.
        resource: the resource labels; ``prefect.resource.id`` identifies it.
        payload: JSON-serialisable details.
        related: related resources (each a label dict with ``prefect.resource.role``).
    """

    event: str
    resource: dict[str, str]
    payload: dict[str, Any]
    related: list[dict[str, str]] = field(default_factory=list)


def model_resource(kind: str, name: str, version: str) -> dict[str, str]:
    """Resource labels for a model version (``kind`` = "model") or its release ("release")."""
    return {
        "prefect.resource.id": f"fp16guard.{kind}.{name}/{version}",
        "prefect.resource.name": name,
        "fp16guard.model.name": name,
        "fp16guard.model.version": version,
    }


def is_url(location: str) -> bool:
    """True for fsspec-style URLs (``s3://...``), which are passed on unchecked."""
    from fp16guard.io.urls import has_scheme

    return has_scheme(location)


def _absolute(location: str) -> str:
    # Workers run in another working directory (often on another host): a relative path from
    # the registering shell would point nowhere there.
    return location if is_url(location) else os.path.abspath(os.path.expanduser(location))


def registration_event(
    model: str,
    name: str,
    version: str,
    calib: Sequence[str],
    holdout: Sequence[str],
    threshold: float | None = None,
    store: str | None = None,
    check_local: bool = True,
) -> EventSpec:
    """Build (and check) a ``fp16guard.model.registered`` event.

    Local paths are made absolute. With ``check_local`` (default), local locations must exist
    on this machine: the model must be a file, calibration and holdout must each resolve to at
    least one shard (``fp16guard.io.shards.discover_shards``). URLs are not checked.

    Args:
        model: FP32 ONNX model path.
        name: store name; version: store version (safe path segments).
        calib: calibration data locations (at least one).
        holdout: holdout data locations (at least one).
        threshold: FP32 threshold on max |x|, in (0, 65504]; None keeps the flow's default.
        store: store root; None lets the worker's ``FP16GUARD_STORE`` decide.
        check_local: check that local locations exist (disable when registering paths that
            only exist on the workers).

    Returns:
        The event, whose payload validates as :class:`~fp16guard.settings.RunParameters`.

    Raises:
        ConfigError: bad name, version or threshold.
        ModelError: the local model file does not exist.
        DataError: calib/holdout empty or pointing at no shard.
    """
    check_name_version(name, version)
    if threshold is not None:
        parse_parameters(PlanSettings, {"threshold": threshold})
    if not calib:
        raise DataError("no calibration data given; expected one or more --calib locations")
    if not holdout:
        raise DataError("no holdout data given; expected one or more --holdout locations")
    model = _absolute(str(model))
    calib = [_absolute(str(c)) for c in calib]
    holdout = [_absolute(str(h)) for h in holdout]
    if check_local:
        if not is_url(model) and not os.path.isfile(model):
            raise ModelError(f"model {model} does not exist or is not a file; expected an ONNX model file")
        from fp16guard.io.shards import discover_shards

        for role, locations in (("calibration", calib), ("holdout", holdout)):
            local = [loc for loc in locations if not is_url(loc)]
            if local:
                discover_shards(local, role=role)
    payload: dict[str, Any] = {
        "contract": CONTRACT_VERSION,
        "model": model,
        "name": name,
        "version": version,
        "calib": calib,
        "holdout": holdout,
    }
    if threshold is not None:
        payload["threshold"] = float(threshold)
    if store is not None:
        payload["store"] = store if is_url(store) else _absolute(store)
    run_parameters(payload)  # the same check the server applies when the trigger fires
    return EventSpec(MODEL_REGISTERED, model_resource("model", name, version), payload)


def check_name_version(name: str, version: str) -> None:
    """Raise ConfigError unless name and version are safe store path segments."""
    for value, what in ((name, "name"), (version, "version")):
        try:
            check_segment(value, what)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def run_parameters(payload: dict[str, Any], trigger_event: dict[str, Any] | None = None) -> RunParameters:
    """Map a registration payload onto the flow's parameters, as the deployment trigger does.

    ``deployments/prefect.yaml`` performs this mapping server-side with templates; this function
    is its reference (tests check that both agree) and lets a release pipeline check a payload
    before sending it.

    Raises:
        ConfigError: a required key is missing, an unknown key is present, or a value is invalid.
    """
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ConfigError(f"registration payload lacks {missing}; expected keys {list(_REQUIRED)} (optional {list(_OPTIONAL)})")
    unknown = sorted(set(payload) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"registration payload has unknown keys {unknown}; expected {list(_REQUIRED)} (optional {list(_OPTIONAL)})")
    if payload.get("contract", CONTRACT_VERSION) != CONTRACT_VERSION:
        raise ConfigError(f"registration payload has contract {payload['contract']!r}; this fp16guard understands {CONTRACT_VERSION}")
    values: dict[str, Any] = {k: payload[k] for k in _REQUIRED}
    if payload.get("store") is not None:
        values["store"] = payload["store"]
    if payload.get("threshold") is not None:
        values["plan"] = {"threshold": payload["threshold"]}
    if trigger_event is not None:
        values["trigger_event"] = trigger_event
    try:
        return parse_parameters(RunParameters, values)
    except ConfigError as exc:
        raise ConfigError(f"registration payload: {exc}") from None


def regression_event(name: str, version: str, run_id: str, reason: str, holdout: Sequence[str], recalibration: str | None = None) -> EventSpec:
    """Build a ``fp16guard.release.regressed`` event for a released run that fails verification.

    Args:
        name, version: the released model version.
        run_id: the store run id of the release that regressed.
        reason: one line from the verification report.
        holdout: the holdout locations it was checked against.
        recalibration: flow run id of the re-calibration started for it, if any.
    """
    payload = {
        "contract": CONTRACT_VERSION,
        "name": name,
        "version": version,
        "run_id": run_id,
        "reason": reason,
        "holdout": list(holdout),
        "recalibration": recalibration,
    }
    return EventSpec(RELEASE_REGRESSED, model_resource("release", name, version), payload)
