"""Timing: warm-up runs, then timed rounds; medians and minima in milliseconds.

Every benchmark that times a model goes through here, so that "median ms" means the same in all
their tables: the median over every timed run (``rounds`` x ``per_round``), after ``warmup``
untimed runs. Where several variants are compared, they are timed round by round (interleaved),
so that slow drift of a shared machine falls on all of them alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

__all__ = ["Timing", "interleaved", "measure", "stopwatch"]


@dataclass
class Timing:
    """Timed runs of one variant, in milliseconds."""

    samples_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        """Median over all timed runs (NaN when there are none)."""
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def min_ms(self) -> float:
        """Fastest timed run (NaN when there are none)."""
        return min(self.samples_ms) if self.samples_ms else float("nan")

    def to_dict(self) -> dict:
        """``median_ms``, ``min_ms``, ``runs`` and the samples, for a JSON record."""
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "runs": len(self.samples_ms), "samples_ms": self.samples_ms}


def stopwatch(fn: Callable[[], object]) -> float:
    """Milliseconds one call of ``fn`` takes (wall clock, ``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def measure(run: Callable[[], object], warmup: int = 1, repeats: int = 5) -> Timing:
    """Time ``run`` ``repeats`` times after ``warmup`` untimed calls.

    Args:
        run: one call is one timed unit (it must itself wait for the device, e.g. IOBinding's
            ``synchronize_outputs``).
        warmup: untimed calls first (default 1).
        repeats: timed calls (default 5).
    """
    for _ in range(warmup):
        run()
    return Timing([stopwatch(run) for _ in range(repeats)])


def interleaved(runs: Mapping[str, Callable[[], object]], warmup: int = 1, rounds: int = 3, per_round: int = 5,
                rewarm: int = 0) -> dict[str, Timing]:
    """Time several variants round by round: in each of ``rounds`` rounds, every variant
    ``per_round`` times in turn (after ``rewarm`` untimed calls, default 0).

    Args:
        runs: name -> one timed call of that variant.
        warmup: untimed calls of each variant before the first round (default 1).
        rounds: interleaved rounds (default 3).
        per_round: timed calls of each variant per round (default 5).
        rewarm: untimed calls of a variant before its turn in every round (default 0).

    Returns:
        name -> :class:`Timing` over ``rounds * per_round`` timed calls.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    out = {name: Timing() for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(rewarm):
                run()
            out[name].samples_ms += [stopwatch(run) for _ in range(per_round)]
    return out
