"""The run manifest (``manifest.json``) as a typed record.

The manifest is assembled by :func:`fp16guard.store.lineage.build_manifest` (what went in, what
came out, who computed what, with which code); this record is how it is held, checked and
written: :meth:`Manifest.from_dict` reads one back (unknown keys are kept, so older and newer
manifests round-trip), :meth:`Manifest.to_dict` gives what
:func:`fp16guard.records.serialize.write_json` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

__all__ = ["FileRecord", "Manifest"]


@dataclass
class FileRecord:
    """sha256 and size of one file of a run (or of an input at its location)."""

    sha256: str
    bytes: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FileRecord":
        """Read ``{"sha256", "bytes"}``.

        Raises:
            ValueError: no sha256 string.
        """
        sha = (data or {}).get("sha256")
        if not isinstance(sha, str) or not sha:
            raise ValueError(f"file record {dict(data or {})!r} has no sha256; expected {{'sha256': '<hex>', 'bytes': n}}")
        size = data.get("bytes")
        return cls(sha256=sha, bytes=int(size) if isinstance(size, int) and not isinstance(size, bool) else None)

    def to_dict(self) -> dict[str, Any]:
        """``{"sha256", "bytes"}``."""
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass
class Manifest:
    """The lineage record of one run.

    Attributes:
        schema: manifest schema number (:data:`fp16guard.store.lineage.MANIFEST_SCHEMA`).
        run_id, name, version: which run of which model version.
        status: ``"verified"`` or ``"rejected"``.
        reason: why it was rejected; None when verified.
        created: ISO 8601 time (UTC) the manifest was made.
        flow_run: the Prefect flow run (id, name, deployment, UI URL), when there is one.
        trigger: ``{"type": "manual"|"schedule"|"event", ...}``.
        parameters: the run's parameters as given.
        inputs: ``{"model": {...}, "calibration": [...], "holdout": [...]}`` file records with
            locations.
        outputs: ``{file name in the run folder: FileRecord}``.
        backend: the build backend's record.
        versions: package versions.
        device: where the run computed.
        plan: how the FP32 set was found, in short
            (:func:`fp16guard.report.plan_summary.plan_summary`: strategy, FP32 nodes by reason,
            repair outcome / iterations / seconds / nodes added, folded regions and largest
            scale); None in manifests written before it was recorded.
        verdict: the verdict's first line (:func:`fp16guard.report.verdict.headline`), e.g.
            ``VERIFIED — but only 3% of the arithmetic runs in FP16: ...``.
        fp16_share: the FP16 share of the estimated FLOPs and of the compute nodes
            (:meth:`fp16guard.plan.cost.FP16Share.to_dict`); None when not estimated.
        speed: what the profile says about speed (:func:`fp16guard.report.verdict.speed_verdict`).
        release_gate: the release settings' judgement of a verified run
            (:meth:`fp16guard.store.gate.GateDecision.to_dict`); None for a rejected run.
        extra: keys this version does not know, kept as they were.
    """

    run_id: str
    name: str
    version: str
    status: str
    schema: int = 1
    reason: str | None = None
    created: str | None = None
    flow_run: dict[str, Any] | None = None
    trigger: dict[str, Any] | str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, FileRecord] = field(default_factory=dict)
    backend: dict[str, Any] | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    verdict: str | None = None
    fp16_share: dict[str, Any] | None = None
    speed: dict[str, Any] | None = None
    release_gate: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in ("verified", "rejected"):
            raise ValueError(f"manifest status {self.status!r} is not accepted; expected 'verified' or 'rejected'")

    def add_output(self, rel: str, record: Mapping[str, Any] | FileRecord) -> None:
        """Record (or replace) the hash of one output file of the run."""
        self.outputs[rel] = record if isinstance(record, FileRecord) else FileRecord.from_dict(record)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        """Read a manifest dict (as built by ``build_manifest`` or read from ``manifest.json``).

        Raises:
            ValueError: a required key (run_id, name, version, status) is missing, or an output
                record has no sha256.
        """
        data = dict(data or {})
        missing = [k for k in ("run_id", "name", "version", "status") if not data.get(k)]
        if missing:
            raise ValueError(f"manifest lacks {', '.join(missing)}; expected run_id, name, version and status")
        known = {f.name for f in fields(cls)} - {"extra", "outputs"}
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        outputs = {str(k): FileRecord.from_dict(v) for k, v in (data.pop("outputs", None) or {}).items()}
        return cls(**kwargs, outputs=outputs, extra=data)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``manifest.json``."""
        optional = ("plan", "verdict", "fp16_share", "speed", "release_gate")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "outputs", *optional)}
        for key in optional:  # older manifests lack them: they round-trip unchanged
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["outputs"] = {k: v.to_dict() for k, v in self.outputs.items()}
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out
