"""Plan strategies: how a plan is made from a model and its statistics, beside the rules.

The rules (:mod:`fp16guard.plan.rules`) decide node by node which nodes stay FP32 on a given
model. A **strategy** may first transform the model (exactly, so it computes the same function)
and then apply the rules to the transformed one. The plan it returns records what it did, so
the build can make the same model again from the original (:func:`model_for_plan`).

Strategies (``PlanSettings.strategy``):

* ``pin`` — the rules on the model as it is (the range rule pins every node with a float input
  or output above the threshold).
* ``fold`` — :mod:`fp16guard.plan.strategies.fold`: fold BatchNormalization into Convs, fold
  power-of-two scales into weights where that is exact, then the rules on the folded model.
* ``auto`` (default) — both; the folded plan when it keeps fewer compute nodes (Conv, Gemm,
  MatMul...) in FP32 than pinning, else the pinned plan on the unchanged model. Repair, when the
  flow runs it, starts from the chosen plan.

Whichever plan is chosen, FP16 runs too short to pay for their Casts then move to FP32
(:mod:`fp16guard.plan.strategies.islands`, its cost model fitted on GPU timings); a model whose
plan keeps nothing FP32 has no such run and is unchanged.
"""

from __future__ import annotations

from fp16guard.plan.strategies.fold import STRATEGIES, model_for_plan, plan_model, plan_with_strategy

__all__ = ["STRATEGIES", "plan_model", "plan_with_strategy", "model_for_plan"]
