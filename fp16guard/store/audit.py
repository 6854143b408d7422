"""Reading the store back: re-check a run's hashes, and list a model's runs and releases.

What this module reads from a run (written by the flow; the store does not write them):

- ``manifest.json``: ``created`` (ISO time), ``trigger`` (``{"type": "manual"|"schedule"|"event", ...}``
  or a string), ``outputs`` (``{"<file name in the run folder>": {"sha256": "...", "bytes": n}}``)
  and ``inputs`` (any nesting of dicts/lists; every dict holding ``sha256`` plus ``location``,
  ``path`` or ``uri`` is taken as an input file record).
- ``verification.json``: ``passed``, ``reason``, ``outputs`` (``{name: {"max_rel_error", ...}}``).
- ``plan.json``: ``counts.fp32`` (else the length of ``fp32_nodes``).

Every file is optional for ``history`` (a missing figure is shown as None); ``verify_run`` reports a
missing ``manifest.json`` as a problem. Damaged records (a ``status.json``, release record or
manifest that is not the JSON object it should be) are findings: ``verify_run`` lists them,
``history`` shows the run as ``damaged`` with the reason and goes on.

Dependencies point one way: this module reads a :class:`fp16guard.store.runs.Store`; the store
does not import it.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from fp16guard.errors import StoreError
from fp16guard.io.urls import is_remote, local_path
from fp16guard.store.runs import DamagedRecord, Store, open_store

__all__ = ["verify_run", "history", "worst_rel_error"]

#: status words -> the one vocabulary (verified / rejected); older records said passed / failed
_STATUS_WORDS = {"verified": "verified", "rejected": "rejected", "passed": "verified", "failed": "rejected"}


def verify_run(store: "Store | str | None", name: str, version: str, run_id: str | None = None, check_inputs: bool = False) -> list[str]:
    """Re-hash every file of a run and compare with what was recorded.

    Checks (each failure is one line in the result):
      1. every file listed in ``status.json`` (written by the store at commit) exists and matches;
      2. no file was added to the run folder after commit;
      3. every file in ``manifest.json["outputs"]`` exists in the run and matches its sha256;
      4. with ``check_inputs``, every input record (model, shards) is still readable at its
         location and matches its sha256.

    Args:
        store: the store (or its root; see :func:`fp16guard.store.runs.open_store`).
        name, version: the model version.
        run_id: the run to check; default the version's current release.
        check_inputs: also re-hash the input files named in the manifest (they live outside
            the store and may be gone; default False).

    Returns:
        The problems found; an empty list means every recorded hash matches.

    Raises:
        StoreError: the run (or, without ``run_id``, any release) does not exist.
    """
    store = open_store(store)
    problems: list[str] = []
    if run_id is None:
        release = store.current_release(name, version, problems)
        if release is None:
            if problems:  # the release records themselves are the finding
                return problems
            raise StoreError(f"{name}/{version} has no release in {store.url}; pass a run id (`fp16guard history {name}` lists them)")
        run_id = release["run_id"]
    else:
        store.release_history(name, version, problems)
    run_dir = store.run_path(name, version, run_id)
    try:
        status = store.run_status(name, version, run_id)
    except DamagedRecord as exc:
        if not store.fs.exists(run_dir):
            raise StoreError(f"run {name}/{version}/{run_id} not found in {store.url}") from None
        problems.append(str(exc))
        status = {"files": {}}
    present = {f for f in store.fs.files_under(run_dir) if not _hidden(f)}

    def check(rel: str, expected: str | None, source: str) -> None:
        if rel not in present:
            problems.append(f"{rel}: listed in {source} but missing from the run")
        elif not isinstance(expected, str) or not expected:
            problems.append(f"{rel}: {source} records no sha256")
        elif getattr(store.fs, "is_link", lambda _: False)(f"{run_dir}/{rel}"):
            problems.append(f"{rel}: is a symbolic link (a run holds files only; links are not followed)")
        elif (actual := store.fs.sha256(f"{run_dir}/{rel}")) != expected:
            problems.append(f"{rel}: sha256 {actual[:12]}… does not match {source} ({expected[:12]}…)")

    recorded = status.get("files") or {}
    for rel, rec in sorted(recorded.items()):
        check(rel, rec.get("sha256") if isinstance(rec, dict) else None, "status.json")
    for rel in sorted(present - set(recorded) - {"status.json"}):
        problems.append(f"{rel}: present in the run but not recorded at commit")

    try:
        manifest = store.read_json(name, version, run_id, "manifest.json")
    except StoreError as exc:
        problems.append(f"manifest.json: cannot be read ({exc})")
        return problems
    outputs = manifest.get("outputs") or {}
    if not isinstance(outputs, dict):
        problems.append(f"manifest.json: 'outputs' is a {type(outputs).__name__}; expected {{file name: {{sha256, bytes}}}}")
        outputs = {}
    for rel, rec in sorted(outputs.items()):
        check(rel, (rec or {}).get("sha256") if isinstance(rec, dict) else None, "manifest.json outputs")

    if check_inputs:
        for location, expected in _input_records(manifest.get("inputs")):
            try:
                actual = _hash_location(location)
            except Exception as exc:  # noqa: BLE001 — any unreadable input is a finding, not a crash
                problems.append(f"input {location}: cannot be read ({type(exc).__name__}: {exc})")
                continue
            if actual != expected:
                problems.append(f"input {location}: sha256 {actual[:12]}… does not match the manifest ({expected[:12]}…)")
    return problems


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _input_records(node: Any) -> Iterator[tuple[str, str]]:
    """Yield (location, sha256) for every file record nested anywhere in the manifest's inputs."""
    if isinstance(node, dict):
        location = node.get("location") or node.get("path") or node.get("uri")
        if isinstance(node.get("sha256"), str) and isinstance(location, str):
            yield location, node["sha256"]
        for value in node.values():
            if isinstance(value, (dict, list)):
                yield from _input_records(value)
    elif isinstance(node, list):
        for value in node:
            yield from _input_records(value)


def _hash_location(location: str) -> str:
    """Recompute an input's digest the way the flow computed it.

    ``<file>#<i>`` is the i-th feed dict of a Polygraphy JSON file (``data.shard_digest``: a digest
    of its arrays); a local ``.onnx`` uses ``model_io.model_digest`` (the file plus its external
    data); anything else is the sha256 of the file's (or URL's object's) bytes.
    """
    base, _, index = location.rpartition("#") if "#" in location else (location, "", "")
    if not is_remote(base):
        path = local_path(base)
        if index:
            from fp16guard.io.shards import ShardRef, shard_digest

            if not os.path.exists(path):
                raise FileNotFoundError(path)
            return shard_digest(ShardRef(name=location, path=path, index=int(index)))
        if path.endswith(".onnx"):
            from fp16guard.io.model import model_digest

            if not os.path.exists(path):
                raise FileNotFoundError(path)
            return model_digest(path)
    from fp16guard.io.shards import ShardRef, shard_digest

    # Files and shards by URL (their JSON feed dicts too) are hashed as the flow hashed them: a
    # URL with the fsspec options the store uses (its S3 endpoint), its bytes streamed.
    path = base if is_remote(base) else local_path(base)
    return shard_digest(ShardRef(name=location, path=path, index=int(index) if index else None))


def history(store: "Store | str | None", name: str, version: str | None = None, problems: list[str] | None = None) -> list[dict]:
    """One row per committed run of ``name`` (all versions, or one), oldest first per version.

    Row keys: ``name, version, run_id, time, status ("verified"|"rejected"|"damaged"), reason,
    released ("current"|"previous"|""), fp32_nodes (int|None), fp16_share (FP16 share of the
    estimated FLOPs, 0..1; None when the manifest has none), worst_rel_error (float|None),
    trigger (str)``. A run whose ``status.json`` is damaged gets status ``"damaged"`` and the
    damage as its reason; damaged run files count as missing.

    Args:
        store: the store (or its root).
        name: model name. version: one version (default all).
        problems: when given, one line is appended per damaged record met (release records,
            status files, run files).

    Raises:
        StoreError: a bad name/version, or ``name`` has no runs at all.
    """
    store = open_store(store)
    problems = [] if problems is None else problems
    versions = [version] if version else store.versions(name)
    rows = []
    for ver in versions:
        releases = store.release_history(name, ver, problems)
        current = releases[-1]["run_id"] if releases else None
        ever = {r["run_id"] for r in releases}
        for run_id in store.runs(name, ver):
            rows.append(_row(store, name, ver, run_id, current, ever, problems))
    if not rows and not versions:
        raise StoreError(f"no model named {name!r} in {store.url}")
    return sorted(rows, key=lambda r: (r["version"], r["time"] or "", r["run_id"]))


def _row(store: "Store", name: str, version: str, run_id: str, current: str | None, ever: set[str], problems: list[str]) -> dict:
    try:
        status = store.run_status(name, version, run_id)
    except DamagedRecord as exc:
        problems.append(str(exc))
        status = {"status": "damaged", "reason": str(exc)}
    manifest = _safe_json(store, name, version, run_id, "manifest.json", problems)
    verification = _safe_json(store, name, version, run_id, "verification.json", problems)
    plan = _safe_json(store, name, version, run_id, "plan.json", problems)
    trigger = manifest.get("trigger")
    if isinstance(trigger, dict):
        trigger = trigger.get("type")
    fp32 = (plan.get("counts") or {}).get("fp32")
    if fp32 is None and isinstance(plan.get("fp32_nodes"), list):
        fp32 = len(plan["fp32_nodes"])
    return {
        "name": name,
        "version": version,
        "run_id": run_id,
        "time": manifest.get("created") or status.get("committed_at"),
        "status": _STATUS_WORDS.get(status.get("status"), str(status.get("status"))),
        "reason": status.get("reason") or verification.get("reason") or "",
        "released": "current" if run_id == current else ("previous" if run_id in ever else ""),
        "fp32_nodes": fp32,
        "fp16_share": _share(manifest),
        "worst_rel_error": worst_rel_error(verification),
        "trigger": str(trigger) if trigger else "",
    }


def worst_rel_error(verification: dict) -> float | None:
    """The run's worst relative error, as :func:`fp16guard.records.worst_rel_error` defines it
    for every view (``inf`` when an output is NaN/inf or could not be compared)."""
    from fp16guard.records.verification import worst_rel_error as _worst

    return _worst(verification)


def _safe_json(store: "Store", name: str, version: str, run_id: str, filename: str, problems: list[str] | None = None) -> dict:
    """A run file as a dict; ``{}`` when missing or damaged (a damaged one is noted in ``problems``)."""
    try:
        value = store.read_json(name, version, run_id, filename, default={})
    except DamagedRecord as exc:
        if problems is not None:
            problems.append(str(exc))
        return {}
    return value if isinstance(value, dict) else {}


def _share(manifest: dict) -> float | None:
    """The manifest's FP16 share of the estimated FLOPs (0..1), None when absent or malformed."""
    record = manifest.get("fp16_share")
    value = record.get("share_flops") if isinstance(record, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
