"""Every user-settable parameter, in one place, with descriptions and bounds.

The CLI and the Prefect flow share these pydantic models: the flow takes :class:`RunParameters`
as its one parameter, so the Prefect UI renders a form from the descriptions, bounds and choices
below and the server rejects bad values before a run starts (docs/FACTS.md #15). Nothing here reads the
environment at import time.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from fp16guard import FP16_MAX
from fp16guard.backend_names import backend_names

#: Names and versions become folder names in the store: letters, digits, '.', '_', '-' only.
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_segment(value: str, what: str) -> str:
    """Return ``value`` if it is a safe single path segment, else raise ``ValueError``."""
    if not SAFE_SEGMENT.match(value or "") or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not allowed; expected 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"
        )
    return value


#: Form titles where the field name does not read well (the Prefect UI shows them as labels).
TITLES = {
    "calib": "Calibration data",
    "holdout": "Holdout data",
    "model": "FP32 ONNX model",
    "name": "Model name",
    "version": "Model version",
    "store": "Store",
    "providers": "Execution providers",
    "tensorrt_mode": "TensorRT typing mode",
    "tensorrt_workspace_mib": "TensorRT workspace (MiB)",
    "plan": "Plan: which nodes stay FP32",
    "verify": "Verification tolerances",
    "promote": "Promote to release",
    "max_rel_error": "Max relative error",
    "min_cosine": "Min cosine similarity",
    "force_fp32_nodes": "Force FP32: node name regex",
    "force_fp32_ops": "Force FP32: op types",
    "force_fp16_nodes": "Force FP16: node name regex",
    "k": "k (top-k)",
}
_WORDS = {"fp32": "FP32", "fp16": "FP16", "tensorrt": "TensorRT", "mib": "MiB", "rel": "relative", "max": "max", "min": "min"}


def field_title(name: str, _info: Any = None) -> str:
    """The form title of a field: :data:`TITLES`, else its name in words ("batch_size" → "Batch size")."""
    if name in TITLES:
        return TITLES[name]
    words = [_WORDS.get(w, w) for w in name.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


class PlanSettings(BaseModel):
    """Which nodes stay in FP32."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)

    threshold: float = Field(
        10000.0,
        gt=0,
        le=FP16_MAX,
        description="A node stays FP32 when any float input or output has max |x| above this (FP16 holds up to 65504; the margin covers data unseen in calibration).",
    )
    force_fp32_nodes: str | None = Field(None, description="Regular expression: nodes whose name matches always stay FP32.")
    force_fp32_ops: list[str] = Field(default_factory=list, description="Op types that always stay FP32, e.g. ['Softmax', 'LayerNormalization'].")
    force_fp16_nodes: str | None = Field(None, description="Regular expression: nodes whose name matches are built in FP16 even when a rule says FP32.")
    strategy: Literal["auto", "pin", "fold"] = Field(
        "auto",
        description="pin: keep FP32 every node the rules name (the range rule). fold: first fold power-of-two scales into weights where that is exact (fp16guard.plan.strategies.fold), then the rules on the folded model. auto: fold when that keeps fewer Conv/Gemm/MatMul nodes FP32, else pin.",
    )
    repair: bool = Field(
        True,
        description="Search for the smallest FP32 set by cost on calibration data with the verification gate, before holdout: the all-FP16 build first (it is the plan when it passes), then the rules' plan, pinning the nodes that add the most FP16 error until it passes, then giving nodes back to FP16, costliest first, while it still passes.",
    )
    repair_max_iterations: int = Field(8, ge=0, le=100, description="Repair: most rebuild-and-check iterations after the first check (the FP32 set grows geometrically, so 8 covers ~256x the first step).")
    repair_max_seconds: float = Field(1200.0, gt=0, le=86400, description="Repair: no new check of the search starts after this many seconds (a safety limit: the check budgets, repair_max_iterations and shrink_max_checks, end the search first on most models, so its result does not depend on the machine's load).")
    repair_samples: int = Field(32, ge=1, le=100_000, description="Repair: calibration samples used for the checks and the per-node error attribution (the first ones).")
    repair_margin: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Repair: headroom for unseen data. None (default): statistical, from how the error varies across calibration samples (a candidate is accepted when its worst error times the growth seen between random halves of the calibration samples passes the gate; fp16guard.plan.search.margin). A number: aim at the verification tolerances times it (1: exactly the gate).",
    )
    shrink_max_checks: int = Field(
        64, ge=0, le=10_000, description="Repair: most candidates the shrink phase checks while giving FP32 nodes back to FP16, costliest first (0: no shrink phase)."
    )
    repair_parallel: int = Field(
        1, ge=1, le=64,
        description="Repair: candidate checks that run at once, in threads of the process that plans (whatever the task runner): the checks the search may need next run ahead of need, and the search consumes them in its own order, so the plan is the same for any value; unused ones cost CPU (repair.speculative counts them). 1: one after the other, onnxruntime using every core inside each check.",
    )

    @field_validator("force_fp32_nodes", "force_fp16_nodes")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a valid regular expression ({exc})") from None
        return value


class OutputGate(BaseModel):
    """How one output is judged, when not by the numeric figures (fp16guard.verify.task_checks)."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)

    gate: Literal["numeric", "top1", "topk", "threshold", "iou", "custom"] = Field(
        "numeric",
        description="numeric: max relative error and cosine (the default, strict); top1: the candidate's arg-max over the last axis equals FP32's (classifiers, CTC heads); topk: FP32's top class is in the candidate's k highest scores; threshold: values on the same side of `threshold` as FP32; iou: the map cut at `threshold` overlaps FP32's with IoU >= min_agreement (detection/segmentation maps); custom: the Metric that `metric` builds. NaN/inf in the candidate always fails.",
    )
    metric: str | None = Field(None, description="custom gate only: 'package.module:factory', called with this OutputGate, returning an fp16guard.verify.metrics.Metric.")
    k: int = Field(5, ge=1, le=1000, description="Classes the topk gate and the reported top-k agreement look at.")
    threshold: float = Field(0.5, ge=-1e30, le=1e30, description="Cut of the threshold gate and the reported thresholded-map agreement (value > threshold is on).")
    min_agreement: float = Field(1.0, ge=0, le=1, description="Smallest fraction of positions (top1/topk) or elements (threshold) that must agree with FP32, or smallest IoU (iou).")

    @field_validator("metric")
    @classmethod
    def _metric_spec(cls, value: str | None) -> str | None:
        if value is not None and (":" not in value or not all(value.partition(":")[::2])):
            raise ValueError(f"{value!r} is not accepted; expected 'package.module:factory'")
        return value


class VerifySettings(BaseModel):
    """When the built artifact counts as equivalent to the FP32 model."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)

    max_rel_error: float = Field(
        0.02, gt=0, le=1, description="Largest allowed max|candidate - fp32| / max|fp32| per output, over all holdout samples."
    )
    min_cosine: float = Field(0.999, ge=-1, le=1, description="Smallest allowed cosine similarity between candidate and FP32 outputs (flattened per output).")
    max_mismatch_fraction: float = Field(
        0.0, ge=0, le=1, description="For integer/boolean outputs: largest allowed fraction of elements that differ from FP32."
    )
    output_gates: dict[str, OutputGate] = Field(
        default_factory=dict,
        description="Per output name, a gate other than the numeric one (e.g. {'probs': {'gate': 'top1'}}). Outputs not named keep the numeric gate. Task checks (top-1/top-k, thresholded agreement) are reported for every float output either way.",
    )

    @field_validator("output_gates", mode="before")
    @classmethod
    def _gate_shorthand(cls, value: Any) -> Any:
        # {"probs": "top1"} is short for {"probs": {"gate": "top1"}}.
        if isinstance(value, dict):
            return {k: ({"gate": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value


class ReleaseSettings(BaseModel):
    """What a verified run must also show to be released (the release gate; off by default).

    A verified run that misses either stays stored as verified but is not released, with the
    refusal in one line (summary, manifest ``release_gate``, status reason).
    """

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)

    min_fp16_share: float = Field(
        0.0, ge=0, le=1,
        description="Smallest FP16 share of the estimated FLOPs (0..1, e.g. 0.5) a verified run needs to be released. 0 (default): no minimum.",
    )
    min_speedup: float | None = Field(
        None, gt=0, le=1000,
        description="Smallest speed-up of the artifact over FP32 (FP32 latency / artifact latency at the largest profiled batch, GPU profile only) a verified run needs to be released, e.g. 1.1. None (default): no minimum. Without a GPU profile it cannot be judged: the run is released and the summary says it was not judged.",
    )


class ExecutionSettings(BaseModel):
    """Where the statistics pass, the holdout verification and the GPU profile run: the task
    runner and how shards are grouped into tasks (issue 18). None of it changes a result:
    stats.parquet, the plan and the verdict are the same for any runner, worker count and
    grouping."""

    model_config = ConfigDict(extra="forbid", field_title_generator=field_title)

    task_runner: Literal["threads", "dask", "dask-cuda"] = Field(
        "threads",
        description="threads (default): shard groups run in this process, `workers` at a time (default: the CPU count, at most 4; statistics sessions run on one thread each so that results do not depend on parallelism). dask: on a Dask cluster through prefect-dask (pip install 'fp16guard[dask]'): a local cluster of `workers` processes, or the one at `dask_address`. dask-cuda: one Dask worker per visible GPU, each pinned to its device (dask-cuda's LocalCUDACluster; pip install 'fp16guard[dask-cuda]'), or an existing dask-cuda cluster at `dask_address`. The statistics pass, the holdout verification and the GPU profile fan out on it.",
    )
    dask_address: str | None = Field(
        None,
        max_length=512,
        description="dask / dask-cuda only: scheduler address of an existing cluster, e.g. tcp://10.0.0.5:8786 (its workers need fp16guard installed and must read the model, the shards and the store). None: a local cluster started for the run.",
    )
    workers: int | None = Field(
        None, ge=1, le=1024,
        description="threads: shard groups at once (default: the CPU count, at most 4). dask without an address: worker processes of the local cluster (default: the CPU count, at most 4). dask-cuda without an address: GPUs used, one worker each (default: every visible GPU).",
    )
    group_samples: int | None = Field(
        None, ge=1, le=10_000_000,
        description="Samples of calibration data per statistics task (one onnxruntime session, each shard still cached on its own). Default 256, fewer when that leaves a worker idle.",
    )
    group_bytes: int | None = Field(
        None, ge=1, le=1 << 50,
        description="Bytes of shard files per statistics task at most (default 256 MiB).",
    )

    @field_validator("dask_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^\s/]+:\d+/?$", value):
            raise ValueError(f"{value!r} is not accepted; expected a Dask scheduler address such as tcp://host:8786")
        return value


def _backend_choices(schema: dict[str, Any]) -> None:
    # Called by pydantic each time a JSON schema is made: the names known then.
    schema["enum"] = list(backend_names())


class RunParameters(BaseModel):
    """Parameters of one fp16guard run (the flow's form in the Prefect UI)."""

    model_config = ConfigDict(
        extra="forbid",
        field_title_generator=field_title,
        title="fp16guard run",
        json_schema_extra={"patternProperties": {"^trigger_event$": {"anyOf": [{"type": "object"}, {"type": "null"}]}}},
    )

    model: str = Field(..., description="Path of the FP32 ONNX model (external-data files beside it), readable where the run executes.")
    calib: list[str] = Field(..., min_length=1, description="Calibration data: .npz files, folders of them, globs, or Polygraphy JSON inputs files, local or at an fsspec URL (s3://bucket/prefix).")
    holdout: list[str] = Field(..., min_length=1, description="Holdout data for verification, same formats as calib. Should not overlap calib.")
    # The pattern goes into the schema, so the Prefect server refuses a name like ../x when the
    # run is created, not when it starts.
    name: str = Field(..., pattern=SAFE_SEGMENT.pattern, description="Model name in the store: 1-128 letters, digits, '.', '_', '-', starting with a letter or digit.")
    version: str = Field(..., pattern=SAFE_SEGMENT.pattern, description="Model version in the store: 1-128 letters, digits, '.', '_', '-', starting with a letter or digit.")
    store: str | None = Field(None, description="Store root (folder or fsspec URL). Default: $FP16GUARD_STORE, else ./fp16guard-store.")
    # Checked when parsed against fp16guard.backend_names (the settings sit below the backends,
    # docs/ARCHITECTURE.md); the choices go into the schema when it is made, so the Prefect form
    # offers them and the server refuses another name, registered backends included.
    backend: str = Field(
        "onnxruntime",
        description="What to build: a mixed-precision ONNX model on onnxruntime, or a TensorRT engine.",
        json_schema_extra=_backend_choices,
    )
    batch_size: int | None = Field(None, ge=1, le=1_000_000, description="Samples per inference call; larger shards run in slices. Default: whole shard.")
    providers: list[Literal["CUDAExecutionProvider", "CPUExecutionProvider"]] = Field(
        default_factory=list,
        description="onnxruntime execution providers for statistics and verification, in order of preference. Empty (default): auto, the CUDA provider when a GPU and onnxruntime-gpu are present (real FP16 kernels, TF32 off), else the CPU (FP16 checked through storage emulation). A provider that is not installed falls back to CPU with a message.",
    )
    tensorrt_mode: Literal["auto", "strong", "weak"] = Field(
        "auto",
        description="TensorRT typing: strong (11.x, or 10.12+ on request) builds from model.mixed.onnx; weak (8.6-10.x) pins the plan's layers to FP32; auto picks by the installed version.",
    )
    tensorrt_workspace_mib: int = Field(4096, ge=64, le=1_048_576, description="TensorRT builder workspace limit, MiB.")
    plan: PlanSettings = Field(default_factory=PlanSettings, description="Which nodes stay FP32.")
    verify: VerifySettings = Field(default_factory=VerifySettings, description="Verification tolerances.")
    promote: bool = Field(False, description="Release this run even if the version already has a released run.")
    allow_overlap: bool = Field(
        False,
        description="Accept holdout data that shares files or contents with the calibration data (refused by default: verifying on calibration data says little about unseen inputs). The verdict then says 'not independent'.",
    )
    release: ReleaseSettings = Field(default_factory=ReleaseSettings, description="Release gate: minimum FP16 share of FLOPs and minimum GPU speed-up (both off by default).")
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings, description="Task runner (threads, Dask or one Dask worker per GPU), workers and shard groups of the statistics pass, the holdout verification and the GPU profile; results do not depend on them.")
    profile_batches: list[Annotated[int, Field(ge=1, le=65536)]] | None = Field(
        None,
        description="Batch sizes at which to time FP32, the artifact and the all-FP16 build on the worker's runtime. None (default): the calibration shard's batch and 32 when the batch is dynamic. Empty list: no profiling. Not timed on the CPU (FP16 nodes there run as FP32).",
    )
    # Internal: not in the form (SkipJsonSchema), but still accepted by the server's validation
    # through patternProperties (see model_config), because triggered deployments fill it in.
    trigger_event: SkipJsonSchema[dict[str, Any] | None] = Field(
        None,
        description="Filled in by event-triggered deployments (event id, name, resource); leave empty when starting a run by hand.",
    )

    @field_validator("profile_batches")
    @classmethod
    def _batches(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(b < 1 or b > 65536 for b in value):
            raise ValueError(f"batch sizes must be between 1 and 65536, got {value}")
        return value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        # One line through parse_parameters: "backend 'nope' is not accepted: expected one of ...".
        names = backend_names()
        if value not in names:
            raise ValueError(f"expected one of {', '.join(names)}")
        return value

    # "before": our one-line message, not pydantic's "should match pattern".
    @field_validator("name", mode="before")
    @classmethod
    def _safe_name(cls, value: Any) -> Any:
        return check_segment(value, "name") if isinstance(value, str) else value

    @field_validator("version", mode="before")
    @classmethod
    def _safe_version(cls, value: Any) -> Any:
        return check_segment(value, "version") if isinstance(value, str) else value


def env_seconds(name: str, default: float) -> float:
    """A duration in seconds from environment variable ``name``, else ``default``.

    Read when called (never at import time).

    Raises:
        ConfigError: the variable is set but is not a positive number, e.g.
            ``FP16GUARD_SERVER_LOST_S='soon' is not accepted; expected a positive number of seconds``.
    """
    import os

    from fp16guard.errors import ConfigError

    text = os.environ.get(name)
    if not text:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{name}={text!r} is not accepted; expected a positive number of seconds")
    return value


def parse_parameters(model: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    """Validate ``data`` into ``model``; turn pydantic's report into one ConfigError line.

    Raises:
        ConfigError: e.g. ``threshold 70000.0 is out of range: Input should be less than or
            equal to 65504``.
    """
    from pydantic import ValidationError

    from fp16guard.errors import ConfigError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p not in ("plan", "verify")) or "parameters"
        msg = first["msg"].removeprefix("Value error, ")
        value = first.get("input")
        shown = "" if isinstance(value, dict) else f" {value!r}"
        raise ConfigError(f"{where}{shown} is not accepted: {msg}") from None
