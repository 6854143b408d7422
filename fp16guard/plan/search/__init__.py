"""The search for the smallest FP32 set by cost (driven by :func:`fp16guard.plan.repair.repair_plan`):
an injected checker (``checker``), a statistical margin (``margin``), and the policies that grow
(``grow``: attribution) and shrink (``shrink``: cost-ordered delta debugging) the set, and the
checks run ahead of need on an executor with decisions kept in order (``speculate``)."""

from fp16guard.plan.search.checker import CalibrationChecker, Check
from fp16guard.plan.search.grow import AttributionGrowth, Pin
from fp16guard.plan.search.margin import Spread, inflation
from fp16guard.plan.search.shrink import CostDdmin
from fp16guard.plan.search.speculate import CheckPool, lookahead

__all__ = ["AttributionGrowth", "CalibrationChecker", "Check", "CheckPool", "CostDdmin", "Pin", "Spread", "inflation", "lookahead"]
