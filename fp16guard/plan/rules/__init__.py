"""The plan rules, one module each, and the default order they are applied in.

Adding a rule: write its module (see :mod:`fp16guard.plan.rule` for the contract) and add one
line to :data:`DEFAULT_RULES`. The order of the list is the priority of the rules' reason codes.
"""

from __future__ import annotations

from typing import Sequence

from fp16guard.plan.rule import Rule
from fp16guard.plan.rules.activation_range import ActivationRangeRule
from fp16guard.plan.rules.activation_underflow import ActivationUnderflowRule
from fp16guard.plan.rules.initializer_range import InitializerRangeRule
from fp16guard.plan.rules.initializer_underflow import InitializerUnderflowRule
from fp16guard.plan.rules.integer_conversion import IntegerConversionRule
from fp16guard.plan.rules.masked_nonfinite import MaskedNonfiniteRule
from fp16guard.plan.rules.structural import StructuralRule
from fp16guard.plan.rules.user_overrides import UserOverridesRule

__all__ = ["DEFAULT_RULES", "reason_codes", "structural_codes"]

#: Rules applied by :func:`fp16guard.plan.planner.make_plan`, in priority order.
DEFAULT_RULES: tuple[Rule, ...] = (
    StructuralRule(),
    UserOverridesRule(),
    InitializerRangeRule(),
    MaskedNonfiniteRule(),  # before the range rule: NaN/inf is its own reason, not a large value
    ActivationRangeRule(),
    IntegerConversionRule(),
    InitializerUnderflowRule(),
    ActivationUnderflowRule(),
)


def reason_codes(rules: Sequence[Rule] = DEFAULT_RULES) -> tuple[str, ...]:
    """Every code the rules own, in priority order (first owner wins on duplicates)."""
    return tuple(dict.fromkeys(code for rule in rules for code in rule.codes))


def structural_codes(rules: Sequence[Rule] = DEFAULT_RULES) -> tuple[str, ...]:
    """The codes of structural rules (``force_fp16_nodes`` cannot override them)."""
    return tuple(dict.fromkeys(code for rule in rules if rule.structural for code in rule.codes))
