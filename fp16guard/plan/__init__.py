"""Planning: which nodes of a model stay FP32, and why.

* :mod:`fp16guard.plan.rule` — the rule protocol (:class:`~fp16guard.plan.rule.Rule`,
  :class:`~fp16guard.plan.rule.PlanContext`, :class:`~fp16guard.plan.rule.Finding`);
* :mod:`fp16guard.plan.rules` — one module per rule and ``DEFAULT_RULES``;
* :mod:`fp16guard.plan.planner` — :func:`~fp16guard.plan.planner.make_plan` applies the rules;
* :mod:`fp16guard.plan.records` — the typed ``plan.json`` records (``Plan``, ``PlanEntry``);
* :mod:`fp16guard.plan.values` — summaries of stored float values (initializers, constants).
"""
