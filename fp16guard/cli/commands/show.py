"""``fp16guard show NAME --model-version V [--run ID] [--store S]``: the manifest and verification of a run.

Without ``--run`` it shows the version's current release. Prints a short header (run, status,
release, the verdict's first line, FP16 share of the estimated FLOPs, a release-gate refusal), then ``manifest.json`` and ``verification.json`` as indented JSON. Exit 0; 2 when the
version has no release (and no ``--run``) or the run does not exist.
"""

from __future__ import annotations

import argparse
import json

from fp16guard.cli.common import add_run_selection, model_version


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``show`` command."""
    p = sub.add_parser(
        "show",
        help="print the manifest and verification of the release (or of a run)",
        description="Print the run's status, reason and location, then its manifest.json and verification.json. Without --run: the version's current release.",
    )
    add_run_selection(p)
    p.add_argument(
        "--as",
        dest="export",
        choices=("trtexec", "polygraphy"),
        help="print only the TensorRT <=10 command that builds the run's model.mixed.onnx with its plan's FP32 layers pinned (weak typing; TensorRT 11 takes model.mixed.onnx as is)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Print the run's records; returns 0."""
    import sys

    from fp16guard.errors import StoreError
    from fp16guard.store.fs import UnsafeLink
    from fp16guard.store.runs import DamagedRecord, Store

    store = Store(args.store)
    name, version = args.name, model_version(args)
    damaged: list[str] = []  # damaged records are reported and skipped, not fatal
    release = store.current_release(name, version, damaged)
    for line in damaged:
        print(f"fp16guard: warning: {line}", file=sys.stderr)
    run_id = args.run_id or (release or {}).get("run_id")
    if run_id is None:
        raise StoreError(f"{name}/{version} has no release in {store.url}; pass --run ID (`fp16guard history {name}` lists the runs)")
    try:
        status = store.run_status(name, version, run_id)
    except DamagedRecord as exc:
        print(f"fp16guard: warning: {exc}", file=sys.stderr)
        status = {"status": "damaged", "reason": str(exc)}
    if getattr(args, "export", None):
        return _export(store, name, version, run_id, args.export)
    released = "current release" if release and release["run_id"] == run_id else "not released"
    print(f"run {name}/{version}/{run_id}: {status.get('status')} ({released})")
    if status.get("reason"):
        print(f"reason: {status['reason']}")
    print(f"location: {store.run_url(name, version, run_id)}")
    for line in _verdict_lines(store, name, version, run_id):
        print(line)
    for filename in ("manifest.json", "verification.json"):
        print(f"\n== {filename}")
        try:
            content = store.read_json(name, version, run_id, filename, default=None)
        except (DamagedRecord, UnsafeLink) as exc:
            print(f"(not shown: {exc})")
            continue
        print(json.dumps(content, indent=2, sort_keys=True) if content is not None else "(missing)")
    return 0


def _verdict_lines(store, name: str, version: str, run_id: str) -> list[str]:
    """The manifest's verdict, FP16 share and release-gate refusal, one line each (none for a
    manifest that lacks them or cannot be read: the JSON below says why)."""
    from fp16guard.report.verdict import share_text

    try:
        manifest = store.read_json(name, version, run_id, "manifest.json", default=None) or {}
    except Exception:  # noqa: BLE001 - shown (or its damage reported) with the JSON below
        return []
    lines = []
    if manifest.get("verdict"):
        lines.append(f"verdict: {manifest['verdict']}")
    if share_text(manifest.get("fp16_share")):
        lines.append(f"fp16 share: {share_text(manifest.get('fp16_share'))}")
    if (manifest.get("release_gate") or {}).get("refused"):
        lines.append(f"release gate: {manifest['release_gate']['refused']}")
    return lines


def _export(store, name: str, version: str, run_id: str, fmt: str) -> int:
    """Print the trtexec / Polygraphy command for the run (``fp16guard.plan.export``); returns 0."""
    import sys
    from pathlib import Path

    from fp16guard.plan.export import export_plan

    plan = store.read_json(name, version, run_id, "plan.json")
    artifact = f"{store.run_url(name, version, run_id)}/model.mixed.onnx"
    model = None
    from fp16guard.io.urls import is_remote

    if not is_remote(artifact) and Path(artifact).is_file():
        from fp16guard.io.model import load_graph

        model = load_graph(artifact)  # types each pinned output (int outputs keep their type)
    exported = export_plan(plan, artifact, fmt, model)
    print(exported.command)
    if exported.run_argv:
        print(f"# or build and run in one step: {exported.run_command}")
    for node in exported.unnamed:
        print(f"warning: plan node {node!r} has ',' or ':' in its name and cannot be pinned with these flags; pin it with a network script or build strongly typed", file=sys.stderr)
    return 0
