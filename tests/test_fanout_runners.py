"""The ``dask-cuda`` task runner (issue 18): one Dask worker per visible GPU, each pinned to its
device. This machine has no GPU and no dask-cuda, so what runs here is what must hold anywhere:
the cluster's arguments for N GPUs (a pure function), the GPU list as CUDA reads
``CUDA_VISIBLE_DEVICES``, and one ConfigError line, before the flow starts, where it cannot run.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from fp16guard.cluster import check_runner, cuda_cluster_kwargs, visible_gpus
from fp16guard.errors import ConfigError
from fp16guard.settings import ExecutionSettings, RunParameters

_HAS_DASK_CUDA = importlib.util.find_spec("dask_cuda") is not None


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_cluster_kwargs_give_one_worker_per_gpu(n):
    devices = [str(i) for i in range(n)]
    kwargs = cuda_cluster_kwargs(devices)
    assert kwargs == {
        "CUDA_VISIBLE_DEVICES": ",".join(devices),
        "n_workers": n,
        "threads_per_worker": 1,  # one onnxruntime session per GPU at a time
        "dashboard_address": None,
        "memory_limit": 0,
    }


def test_cluster_kwargs_take_the_first_gpus_and_refuse_more_workers_than_gpus():
    gpus = ["3", "5", "GPU-7f0c", "6"]
    assert cuda_cluster_kwargs(gpus, workers=2)["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert cuda_cluster_kwargs(gpus, workers=4)["n_workers"] == 4
    with pytest.raises(ConfigError, match=r"--workers 5 with task runner 'dask-cuda' is not accepted: 4 GPU\(s\) are visible \(3,5,GPU-7f0c,6\); expected 1 to 4"):
        cuda_cluster_kwargs(gpus, workers=5)
    with pytest.raises(ConfigError, match="needs at least one NVIDIA GPU; none is visible here"):
        cuda_cluster_kwargs([])


@pytest.mark.parametrize(
    "listed, expected",
    [("0,1,2,3", ["0", "1", "2", "3"]), ("2", ["2"]), ("", []), ("-1", []), ("1,-1,2", ["1"]), (" 0 , 1 ", ["0", "1"]), ("GPU-ab12,GPU-cd34", ["GPU-ab12", "GPU-cd34"])],
)
def test_visible_gpus_read_cuda_visible_devices_as_cuda_does(listed, expected):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": listed}) == expected


def test_visible_gpus_without_the_variable_are_the_drivers():
    assert visible_gpus({}, count=4) == ["0", "1", "2", "3"]
    assert visible_gpus({}, count=0) == []


def test_sessions_use_device_0_which_is_the_pinned_gpu():
    """LocalCUDACluster gives worker i a CUDA_VISIBLE_DEVICES list that starts with its own GPU,
    so CUDA device 0 in the worker is that GPU: fp16guard's sessions must not name another."""
    from fp16guard.runners.onnxrt import DEFAULT_CUDA_OPTIONS

    assert DEFAULT_CUDA_OPTIONS.get("device_id", "0") == "0"


def test_dask_cuda_refused_in_one_line_here(monkeypatch):
    """No dask-cuda here: the missing package, named with its extra. Where dask-cuda is
    installed, no visible GPU (CUDA_VISIBLE_DEVICES empty) is the line instead."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    execution = ExecutionSettings(task_runner="dask-cuda")
    expected = "none is visible here" if _HAS_DASK_CUDA else r"task runner 'dask-cuda' needs dask-cuda, which is not installed; install it with pip install 'fp16guard\[dask-cuda\]'"
    with pytest.raises(ConfigError, match=expected) as info:
        check_runner(execution)
    assert "\n" not in str(info.value)
    # the flow's runner refuses the same way
    from tasks.runners import stats_runner

    with pytest.raises(ConfigError, match=expected):
        stats_runner(execution)


def test_an_existing_dask_cuda_cluster_needs_only_prefect_dask_here():
    pytest.importorskip("prefect_dask")  # the [dask] extra; installed with [test]
    check_runner(ExecutionSettings(task_runner="dask-cuda", dask_address="tcp://10.0.0.5:8786"))
    check_runner(ExecutionSettings(task_runner="threads"))


def test_cli_dask_cuda_exits_2_before_the_flow(demo_files, tmp_path, monkeypatch):
    """``fp16guard run --task-runner dask-cuda`` on this host: exit 2, one line on stderr, no
    server started and nothing written to the store."""
    from tests.conftest import run_cli

    store = tmp_path / "store"
    proc = run_cli(
        ["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], "--name", "d", "--model-version", "1",
         "--store", str(store), "--task-runner", "dask-cuda"],
        env={"CUDA_VISIBLE_DEVICES": "", "PREFECT_API_URL": "http://127.0.0.1:9/api"},  # a server would not answer: none is asked
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "dask-cuda" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not store.exists() or not any(store.rglob("*.json"))


def test_cli_flags_reach_the_parameters(demo_files):
    from fp16guard.cli.commands.run import parameters_from_args
    from fp16guard.cli.main import build_parser

    base = ["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], "--name", "d", "--model-version", "1"]
    ex = parameters_from_args(build_parser().parse_args([*base, "--task-runner", "dask-cuda", "--workers", "2"])).execution
    assert (ex.task_runner, ex.workers, ex.dask_address) == ("dask-cuda", 2, None)
    ex = parameters_from_args(build_parser().parse_args([*base, "--task-runner", "dask-cuda", "--dask-address", "tcp://h:8786"])).execution
    assert (ex.task_runner, ex.dask_address) == ("dask-cuda", "tcp://h:8786")
    ex = parameters_from_args(build_parser().parse_args([*base, "--dask-address", "tcp://h:8786"])).execution
    assert ex.task_runner == "dask"
    # the run form (the server validates against this schema) offers it too
    schema = json.dumps(RunParameters.model_json_schema())
    assert '"dask-cuda"' in schema


def test_profile_records_merge_like_one_call():
    from fp16guard.backends.profile import CPU_NOTE, _row, speed_summary
    from fp16guard.backends.profile_parts import merge_profiles

    def record(batch, fp32, art, all16, device="NVIDIA H100 80GB HBM3", fp16=True):
        r = {"measured": True, "device": device, "providers": ["CUDAExecutionProvider"], "fp16_kernels": fp16, "tf32": True, "note": None,
             "warmup": 10, "iterations": 50, "batches": [_row(batch, fp32, art, all16)], "summary": None}
        r["summary"] = speed_summary(r)
        return r

    one, many = record(1, 2.0, 1.5, 1.0), record(32, 20.0, 11.0, 10.0)
    merged = merge_profiles([one, many])
    assert [row["batch"] for row in merged["batches"]] == [1, 32]
    assert merged["summary"] == speed_summary({**one, "batches": one["batches"] + many["batches"]})
    assert merged["device"] == "NVIDIA H100 80GB HBM3" and merged["fp16_kernels"]
    # batches timed on two GPU models: both named
    assert merge_profiles([one, record(32, 20.0, 11.0, 10.0, device="NVIDIA H200")])["device"] == "NVIDIA H100 80GB HBM3 / NVIDIA H200"
    # one batch fell back to the CPU: the whole record is a CPU latency, as in one call
    cpu = {**record(32, 20.0, 11.0, 10.0, device="cpu: x86_64", fp16=False), "tf32": None, "providers": ["CPUExecutionProvider"], "note": "CPU latency"}
    mixed = merge_profiles([one, cpu])
    assert not mixed["fp16_kernels"] and mixed["device"] == "cpu: x86_64" and mixed["summary"].endswith("CPU latency, not FP16's")
    # nothing measured (CPU host): the record that says why
    idle = {"measured": False, "note": CPU_NOTE, "batches": [], "summary": None}
    assert merge_profiles([idle, dict(idle)]) == idle
    with pytest.raises(ValueError):
        merge_profiles([])
