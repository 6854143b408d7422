"""Checks ahead of need, decisions in order: the search's candidate checks fan out over an
executor, and every decision stays the one the sequential search makes.

Two halves, kept apart as the search's policies are kept apart from its checker (Polygraphy's
``debug precision`` keeps its search policy apart from the build-and-check loop the same way):

- :func:`lookahead` says **what** may be needed: the FP32 sets a policy with the
  ``next_chunk()`` / ``feedback(accepted)`` / ``clone()`` protocol
  (:class:`~fp16guard.plan.search.shrink.CostDdmin`) may ask to check next, most likely first.
  It plays the policy forward on clones: a candidate whose result is already known follows that
  result; an unknown one branches both ways, each branch weighted by how often candidates were
  accepted so far. A bisection whose first half is being checked thus also names the second half
  (the next chunk if the first is refused) and the next step if it is accepted.
- :class:`CheckPool` **runs** them: up to ``parallel`` checks at once on an injected executor,
  results memoised by the checker, and hands a result out only when the search asks for that FP32
  set, in the search's own order.

Why the plan cannot change: the search consumes results through :meth:`CheckPool.check` in its
sequential order, and a check's result is a function of the FP32 set alone (the same model,
shards, slices and onnxruntime intra-op threads whatever runs beside it,
:class:`~fp16guard.plan.search.checker.CalibrationChecker`). Whether a result was computed ahead
or on demand changes no decision, no recorded step and no count of checks; checks run ahead and
never asked for are counted apart (:attr:`CheckPool.speculative`), never recorded as steps.
"""

from __future__ import annotations

import heapq
import threading
from concurrent.futures import Executor, Future, wait
from typing import Callable, Iterable, Protocol

from fp16guard.plan.search.checker import CalibrationChecker, Check

__all__ = ["CheckPool", "Policy", "lookahead"]

#: States of the policy :func:`lookahead` plays forward per candidate it wants, at most (the
#: search is cheap next to a check; this bounds it on long chains of known results).
EXPANSIONS_PER_CANDIDATE = 8


class Policy(Protocol):
    """What :func:`lookahead` needs of a search policy (:class:`~fp16guard.plan.search.shrink.CostDdmin`)."""

    def next_chunk(self) -> tuple[str, ...] | None: ...

    def feedback(self, accepted: bool) -> None: ...

    def clone(self) -> "Policy": ...


def lookahead(policy: Policy, fp32: frozenset[str], k: int, outcome: Callable[[frozenset[str]], bool | None], accept_rate: float) -> list[frozenset[str]]:
    """Up to ``k`` FP32 sets the sequential search may check next, most likely first.

    The search removes the policy's next chunk from ``fp32`` and keeps the result when accepted;
    this plays that forward on clones of ``policy`` (never touched), best first by the product of
    the branch weights. The first set returned is the one the search checks next, unless its
    result is known already.

    Args:
        policy: the policy in its current state.
        fp32: the current (accepted) FP32 set.
        k: candidates wanted (the checks that may run at once).
        outcome: ``accepted`` for a set whose result is known, None otherwise (nothing runs).
        accept_rate: weight of the *accepted* branch of an unknown result (0..1).

    Returns:
        Distinct FP32 sets whose results are not known, at most ``k``.
    """
    if k <= 0:
        return []
    heap: list[tuple[float, int, Policy, frozenset[str]]] = [(-1.0, 0, policy.clone(), frozenset(fp32))]
    found: list[frozenset[str]] = []
    seen: set[frozenset[str]] = set()
    pushed, budget = 1, EXPANSIONS_PER_CANDIDATE * k + 8
    while heap and len(found) < k and budget > 0:
        weight, _, state, current = heapq.heappop(heap)
        budget -= 1
        chunk = state.next_chunk()
        if chunk is None:
            continue
        trial = current - set(chunk)
        result = outcome(trial)
        if result is None and trial not in seen:
            seen.add(trial)
            found.append(trial)
        branches = ((result, 1.0),) if result is not None else ((True, accept_rate), (False, 1.0 - accept_rate))
        for accepted, share in branches:
            if share <= 0.0:
                continue
            child = state.clone()
            child.feedback(accepted)
            heapq.heappush(heap, (weight * share, pushed, child, trial if accepted else current))
            pushed += 1
    return found


class CheckPool:
    """Checks FP32 sets on an executor ahead of need; hands results out in the order asked.

    Args:
        checker: the open checker (:class:`CalibrationChecker`; its :meth:`~CalibrationChecker.check`
            runs on the executor's threads).
        executor: a ``concurrent.futures.Executor`` that runs callables **in this process**
            (``ThreadPoolExecutor``: onnxruntime releases the GIL while it runs). The checker's
            FP32 reference and memo live here; an executor of other processes or hosts
            (``distributed.Client.get_executor()``) would have to ship the model and the
            reference to each, which is not built. None: every check runs when asked.
        parallel: checks in flight at most (1: none ahead of need, the executor is not used).

    Use as a context manager: on exit, checks still queued are cancelled and running ones are
    told to stop at their next slice, and waited for (the checker may then close).
    """

    def __init__(self, checker: CalibrationChecker, executor: Executor | None = None, parallel: int = 1) -> None:
        self.checker = checker
        self.parallel = max(1, int(parallel))
        self.executor = executor if self.parallel > 1 else None
        self._futures: dict[frozenset[str], tuple[Future, threading.Event]] = {}
        self._started: set[frozenset[str]] = set()
        self._consumed: set[frozenset[str]] = set()

    def __enter__(self) -> "CheckPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ahead(self) -> bool:
        """True when checks may run ahead of need (an executor and ``parallel`` > 1)."""
        return self.executor is not None

    @property
    def checks(self) -> int:
        """FP32 sets the search asked for (each checked once): the sequential search's count."""
        return len(self._consumed)

    @property
    def speculative(self) -> int:
        """Checks started ahead of need that the search never asked for (finished or stopped)."""
        return len(self._started - self._consumed)

    def known(self, fp32: Iterable[str]) -> bool:
        """True when the search asked for ``fp32`` before (asking again costs nothing)."""
        return frozenset(fp32) in self._consumed

    def outcome(self, fp32: frozenset[str]) -> bool | None:
        """``accepted`` of ``fp32`` when its result exists (asked for or run ahead), else None."""
        got = self.checker.peek(fp32)
        return None if got is None else got.accepted

    def prefetch(self, candidates: Iterable[Iterable[str]]) -> int:
        """Start checks of ``candidates`` (most wanted first) so that at most ``parallel`` run.

        Checks started earlier and no longer among the first ``parallel`` candidates are dropped:
        cancelled when still queued, told to stop at their next slice when running (their
        threads go to what is wanted now).

        Returns:
            Checks started by this call (0 without an executor).
        """
        if self.executor is None:
            return 0
        wanted: list[frozenset[str]] = []
        for c in candidates:
            key = frozenset(c)
            if key not in wanted:
                wanted.append(key)
        wanted = wanted[: self.parallel]
        for key, (future, stop) in list(self._futures.items()):
            if key in wanted:
                continue
            if future.done():
                del self._futures[key]  # its result, if any, is memoised by the checker
            elif future.cancel():
                del self._futures[key]
                self._started.discard(key)  # never ran
            else:
                stop.set()
        started = 0
        for key in wanted:
            if key in self._futures or self.checker.known(key):
                continue
            if sum(1 for f, _ in self._futures.values() if not f.done()) >= self.parallel:
                break
            stop = threading.Event()
            self._futures[key] = (self.executor.submit(self.checker.check, key, stop), stop)
            self._started.add(key)
            started += 1
        return started

    def check(self, fp32: Iterable[str]) -> Check:
        """The result for ``fp32``: waited for when it runs ahead, else checked now, in this
        thread. What the sequential search calls where it would call the checker."""
        key = frozenset(fp32)
        entry = self._futures.pop(key, None)
        result = None
        if entry is not None:
            future, stop = entry
            if not stop.is_set():
                result = future.result()  # a check's own error is raised here, as when run now
            else:
                wait([future])  # told to stop before it was wanted again: let it end, check here
        if result is None:
            result = self.checker.check(key)
        self._consumed.add(key)
        return result

    def close(self) -> None:
        """Cancel queued checks, stop running ones at their next slice and wait for them."""
        running = []
        for future, stop in self._futures.values():
            if not future.cancel():
                stop.set()
                running.append(future)
        for key, (future, _) in list(self._futures.items()):
            if future.cancelled():
                self._started.discard(key)
        self._futures.clear()
        if running:
            wait(running)
