"""Repair's candidate checks fan out (issue 18 item 2) and the plan stays exact whatever the
parallelism (item 4): checks run ahead of need on an executor, the search consumes them in its
sequential order. Tiny models built in code, real onnxruntime, real thread pools."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fp16guard.io.shards import ShardRef
from fp16guard.plan.records import Plan, PlanEntry
from fp16guard.plan.repair import REPAIR_REASON, repair_plan
from fp16guard.plan.search.checker import CalibrationChecker
from fp16guard.plan.search.shrink import CostDdmin
from fp16guard.plan.search.speculate import CheckPool, lookahead
from fp16guard.settings import PlanSettings, VerifySettings
from fp16guard.verify.metrics import Gate
from tests.onnx_helpers import init, io, make_model
from tests.test_repair import _cancellation_model, _plan, _shards

#: A weight FP16 rounds to exactly 1: a node holding it loses 3.9e-4 of |x| in FP16.
K = 1 + 0.4 * 2.0**-10
#: The gate of the two-node model: either node alone in FP16 scores 0.65, both 1.3.
GATE = VerifySettings(max_rel_error=3e-4)


def _either_node() -> onnx.ModelProto:
    """y = x @ (K*I) + x * K. In FP16 either product loses the same 3.9e-4 |x| (K rounds to 1),
    so either node alone may go back to FP16, not both: two 1-minimal FP32 sets, {A} and {B}.
    A (a MatMul) costs far more than B (a Mul), so the cost-ordered search tries A first and
    keeps B; a search that took results in another order would keep A."""
    return make_model(
        [
            helper.make_node("MatMul", ["x", "wa"], ["a"], name="A"),
            helper.make_node("Mul", ["x", "kb"], ["b"], name="B"),
            helper.make_node("Add", ["a", "b"], ["y"], name="sum"),
        ],
        [io("x", "n", 16)],
        [io("y", "n", 16)],
        [numpy_helper.from_array((K * np.eye(16)).astype(np.float32), "wa"), init("kb", [K])],
    )


def _grid_shards(tmp_path, count=2, n=16) -> list[ShardRef]:
    """Rows of the FP16-exact values -4 .. 3.5 (every slice reaches |x| = 4: even errors)."""
    rng = np.random.default_rng(0)
    grid = np.arange(-8, 8, dtype=np.float32) / 2
    refs = []
    for i in range(count):
        path = tmp_path / f"grid{i}.npz"
        np.savez(path, x=np.stack([rng.permutation(grid) for _ in range(n)]))
        refs.append(ShardRef(path.name, str(path)))
    return refs


def _either_plan(model: onnx.ModelProto) -> tuple[Plan, PlanSettings]:
    """The Add forced FP32 by the user; A and B pinned by an earlier repair (returnable)."""
    settings = PlanSettings(force_fp32_ops=["Add"])
    nodes = {n.name: n for n in model.graph.node}

    def entry(name: str, reason: str) -> PlanEntry:
        n = nodes[name]
        return PlanEntry(name=name, op_type=n.op_type, inputs=tuple(n.input), outputs=tuple(n.output), reason=reason, reasons=(reason,))

    plan = Plan(threshold=settings.threshold, fp32_nodes=[entry("A", REPAIR_REASON), entry("B", REPAIR_REASON), entry("sum", "forced_op")])
    return plan, settings


def _timeless(plan: Plan) -> dict:
    """plan.json less what may differ between runs of the same search: wall times (the record's,
    each step's, the one in a repaired plan's message), and the parallelism with its unused
    checks."""
    data = plan.to_dict()
    record = dict(data["repair"])
    for key in ("seconds", "parallel", "speculative"):
        record.pop(key)
    record["message"] = re.sub(r", [0-9.]+ s;", ", <time> s;", record["message"])
    record["steps"] = [{k: v for k, v in step.items() if k != "seconds"} for step in record["steps"]]
    return {**data, "repair": record}


class LastFirstExecutor(Executor):
    """A real executor (one worker thread) that runs the most recently submitted job first,
    after letting a batch arrive: results come back in the reverse of the order the search asked
    for them, as they would when later candidates are cheaper. A search that took results as
    they came would decide differently."""

    def __init__(self) -> None:
        self._jobs: list[tuple[Future, object, tuple, dict]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._cv:
            self._jobs.append((future, fn, args, kwargs))
            self._cv.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if not self._jobs:
                    return
            time.sleep(0.05)  # the rest of the batch arrives meanwhile
            with self._cv:
                future, fn, args, kwargs = self._jobs.pop()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if wait:
            self._thread.join()


# ------------------------------------------------------------------------------------------
# the plan is the same whatever the parallelism


def test_either_node_model_has_two_minimal_sets(tmp_path):
    """The premise of the order test: {A} and {B} are each accepted, neither node alone not."""
    model = _either_node()
    with CalibrationChecker(model, _grid_shards(tmp_path), Gate.from_settings(GATE)) as checker:
        both16, a32, b32 = (checker.check(s) for s in ({"sum"}, {"sum", "A"}, {"sum", "B"}))
    assert not both16.accepted and both16.score > 1.2
    assert a32.accepted and b32.accepted and a32.spread.inflation == 1.0


@pytest.mark.parametrize("parallel", [1, 2, 4])
@pytest.mark.parametrize("executor_kind", ["threads", "last_first"])
def test_the_search_consumes_checks_in_its_own_order(tmp_path, parallel, executor_kind):
    model = _either_node()
    calib = _grid_shards(tmp_path)
    plan, settings = _either_plan(model)
    sequential = repair_plan(model, plan, calib, settings, GATE)
    assert sequential.fp32_names == {"sum", "B"}, "the costlier A goes back to FP16 first"
    assert [s.phase for s in sequential.repair.steps] == ["all_fp16", "rules", "shrink"]
    assert sequential.repair.speculative == 0 and sequential.repair.parallel == 1

    executor = ThreadPoolExecutor(max_workers=parallel) if executor_kind == "threads" else LastFirstExecutor()
    lines: list[str] = []
    try:
        fanned = repair_plan(model, plan, calib, replace_parallel(settings, parallel), GATE, executor=executor, on_step=lambda s: lines.append(s.phase))
    finally:
        executor.shutdown()
    assert _timeless(fanned) == _timeless(sequential)
    assert lines == ["all_fp16", "rules", "shrink"]  # progress in the search's order
    assert fanned.repair.parallel == parallel
    # With more than one check at once, the other half of the bisection ({sum, A}) ran ahead
    # and was never used: counted apart, not a step.
    assert fanned.repair.speculative == (0 if parallel == 1 else 1)


def replace_parallel(settings: PlanSettings, parallel: int) -> PlanSettings:
    return settings.model_copy(update={"repair_parallel": parallel})


def test_growth_and_shrink_give_the_same_plan_for_1_2_4_checks_at_once(tmp_path):
    model = _cancellation_model()
    calib = _shards(tmp_path, count=2, n=16)
    plan = _plan(model, calib)
    plans = {p: repair_plan(model, plan, calib, PlanSettings(repair_parallel=p), VerifySettings()) for p in (1, 2, 4)}
    first = plans[1]
    assert first.repair.outcome == "repaired" and {"grow", "shrink"} <= {s.phase for s in first.repair.steps}, first.repair.message
    for p in (2, 4):
        assert _timeless(plans[p]) == _timeless(first), p
        assert plans[p].to_dict()["fp32_nodes"] == first.to_dict()["fp32_nodes"]


def test_a_plan_round_trips_its_parallelism():
    data = Plan(threshold=1e4, fp32_nodes=[]).to_dict()
    record = {"outcome": "shrunk", "message": "m", "parallel": 4, "speculative": 3}
    back = Plan.from_dict({**data, "repair": record}).repair
    assert (back.parallel, back.speculative) == (4, 3)
    old = Plan.from_dict({**data, "repair": {"outcome": "shrunk", "message": "m"}}).repair
    assert (old.parallel, old.speculative) == (1, 0)


def test_repair_parallel_is_a_bounded_setting():
    from pydantic import ValidationError

    assert PlanSettings().repair_parallel == 1
    with pytest.raises(ValidationError):
        PlanSettings(repair_parallel=0)


# ------------------------------------------------------------------------------------------
# each check is safe to run at once


def test_checks_run_at_once_match_checks_run_one_after_the_other(tmp_path):
    """A fresh checker: the concurrent checks also fill the FP32 reference. With one shared
    replay position (the former rewind/infer), they would read each other's outputs."""
    model = _cancellation_model()
    calib = _shards(tmp_path, count=4, n=16)
    gate = Gate.from_settings(VerifySettings())
    sets = [set(), {"shift"}, {"shift", "unshift"}, {"mm", "tanh"}, {"skip", "out"}, {"shift", "unshift", "mm"}]
    with CalibrationChecker(model, calib, gate) as checker:
        alone = [checker.check(s) for s in sets]
    # As repair runs them at once: onnxruntime's threads do not spin (which changes no result).
    with CalibrationChecker(model, calib, gate, spinning=False) as checker, ThreadPoolExecutor(max_workers=len(sets)) as pool:
        together = list(pool.map(checker.check, sets))
        assert checker.checks == len(sets)
    for a, b in zip(alone, together):
        assert (a.fp32, a.score, a.spread, a.worst_rel_error, a.errors) == (b.fp32, b.score, b.spread, b.worst_rel_error, b.errors)


def test_a_stopped_check_memoises_nothing_and_the_pool_checks_it_again(tmp_path):
    from fp16guard.plan.search.checker import CheckAbandoned

    model = _cancellation_model()
    calib = _shards(tmp_path)
    with CalibrationChecker(model, calib, Gate.from_settings(VerifySettings())) as checker:
        stop = threading.Event()
        stop.set()
        with pytest.raises(CheckAbandoned):
            checker.check({"shift"}, stop)
        assert not checker.known({"shift"}) and checker.checks == 0
        with ThreadPoolExecutor(max_workers=2) as executor, CheckPool(checker, executor, parallel=2) as pool:
            assert pool.prefetch([{"mm"}, {"tanh"}, {"skip"}]) == 2  # at most `parallel` at once
            pool.prefetch([{"shift"}])  # the others are no longer wanted: stopped or dropped
            result = pool.check({"shift"})
            again = pool.check({"mm"})  # wanted after all: checked here if it was stopped
        assert result.fp32 == {"shift"} and again.fp32 == {"mm"}
        assert pool.checks == 2 and pool.known({"mm"}) and not pool.known({"tanh"})
        assert pool.speculative == (frozenset({"tanh"}) in pool._started)  # unless cancelled before it ran


# ------------------------------------------------------------------------------------------
# the policy side: what the search may need next


def test_lookahead_names_both_halves_and_leaves_the_policy_alone():
    costs = {"a": 100.0, "b": 100.0, "c": 1.0, "d": 1.0}
    policy = CostDdmin(list(costs), costs)
    fp32 = frozenset(costs) | {"fixed"}
    before = (policy.remaining, policy.n, policy._at, list(policy.refused))
    unknown = lookahead(policy, fp32, 3, lambda s: None, 0.5)
    assert (policy.remaining, policy.n, policy._at, list(policy.refused)) == before
    assert unknown[0] == fp32 - set(policy.next_chunk())  # what the search checks next comes first
    # The whole set refused is known: both halves of the bisection come next.
    refused_all = lookahead(policy, fp32, 2, lambda s: False if s == frozenset({"fixed"}) else None, 0.5)
    halves = [fp32 - s for s in refused_all]
    assert len(halves) == 2 and halves[0] | halves[1] == set(costs) and not halves[0] & halves[1]
    assert lookahead(policy, fp32, 0, lambda s: None, 0.5) == []


def test_plan_task_fans_the_checks_out_and_writes_the_same_plan(tmp_path):
    # The task body (no Prefect server): tasks/plan.py makes the thread pool from the setting.
    import json

    from fp16guard.stats.collect import shard_stats, write_stats_files
    from tasks.plan import plan_task

    model_path = tmp_path / "m.onnx"
    onnx.save(_cancellation_model(), str(model_path))
    calib = _shards(tmp_path)
    write_stats_files([shard_stats(model_path, r) for r in calib], tmp_path / "stats.parquet")
    plans = {}
    for parallel in (1, 2):
        out = tmp_path / f"p{parallel}"
        out.mkdir()
        settings = PlanSettings(strategy="pin", repair_parallel=parallel)
        plans[parallel] = plan_task.fn(str(model_path), str(tmp_path / "stats.parquet"), settings, str(out), calib, VerifySettings(), None)
        assert json.loads((out / "plan.json").read_text()) == plans[parallel]
    assert plans[2]["repair"]["parallel"] == 2 and plans[1]["repair"]["parallel"] == 1
    assert _timeless(Plan.from_dict(plans[2])) == _timeless(Plan.from_dict(plans[1]))
    assert {e["name"] for e in plans[2]["fp32_nodes"]} == {"shift", "unshift"}
