"""Which ops of a model onnxruntime cannot run, read from its kernel registry (no session, no data).

Why: the statistics pass runs every model on onnxruntime whatever the backend, so an op it has
no kernel for (a custom domain such as ``acme.ops``, a misspelt op type) fails the run. Found
when the first session opens, that is after the flow started (issue 20); found here, it is
refused in the preflight, before anything is written.

An op is judged runnable when any of these holds (the rules err on the side of letting
onnxruntime decide: a wrong refusal would block a model that runs):

- the model defines it as a local function (``model.functions``; its body is checked instead);
- onnxruntime registers a kernel for its domain and type on any provider of the installed build;
- default ONNX domain: ``Constant`` (folded into an initializer), or an op whose ONNX schema has
  a function body (onnxruntime expands it);
- a domain onnxruntime knows (``com.microsoft``): an op it has a schema for (possibly a function).

Kernel version ranges are not compared with the model's opset: onnxruntime's own message is
precise for those.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import onnx

__all__ = ["UnsupportedOp", "unsupported_ops", "describe_unsupported"]

_DEFAULT = ("", "ai.onnx")


@dataclass(frozen=True)
class UnsupportedOp:
    """An op onnxruntime cannot run.

    Attributes:
        op_type: the node's op type. domain: its domain ('' for the default ONNX domain).
        node: the first node's name. count: how many nodes use it.
        why: a few words ("no kernel for domain 'acme.ops'", "not an ONNX op").
    """

    op_type: str
    domain: str
    node: str
    count: int
    why: str


@lru_cache(maxsize=1)
def _registry() -> tuple[frozenset, frozenset, frozenset, str]:
    """``(kernels, schemas, domains, version)`` of the installed onnxruntime: kernels and schemas
    as ``(domain, op_type)`` pairs, domains it knows (with kernels or schemas)."""
    import onnxruntime
    from onnxruntime.capi import _pybind_state as C

    kernels = frozenset((k.domain, k.op_name) for k in C.get_all_opkernel_def())
    schemas = frozenset((s.domain, s.name) for s in C.get_all_operator_schema())
    domains = frozenset(d for d, _ in kernels | schemas)
    return kernels, schemas, domains, onnxruntime.__version__


def _onnx_schema_runs(op_type: str, domain: str, kernels: frozenset) -> str | None:
    """None when a default-domain (or ai.onnx.ml) op can run, else why not."""
    if (domain, op_type) in kernels or (domain == "" and op_type == "Constant"):
        return None
    if not onnx.defs.has(op_type, domain):
        return "not an ONNX op" if domain == "" else f"not an op of domain '{domain}'"
    schema = onnx.defs.get_schema(op_type, domain)
    if schema.has_function or schema.has_context_dependent_function:
        return None
    return "onnxruntime has no kernel for it"


def unsupported_ops(model: onnx.ModelProto) -> list[UnsupportedOp]:
    """Ops of ``model`` (main graph, If/Loop/Scan bodies and local function bodies) that the
    installed onnxruntime cannot run, one entry per ``(domain, op type)``, in graph order.

    Args:
        model: the model (a graph-only load is enough: weights are not read).
    """
    from fp16guard.graph.info import subgraphs

    kernels, schemas, domains, _ = _registry()
    local = {(f.domain, f.name) for f in model.functions}
    found: dict[tuple[str, str], list] = {}

    def judge(op_type: str, domain: str) -> str | None:
        if (domain, op_type) in local:
            return None
        if domain in ("", "ai.onnx.ml"):
            return _onnx_schema_runs(op_type, domain, kernels)
        if domain not in domains:
            return f"no kernel for domain '{domain}' in onnxruntime and no model-local function defines it"
        if (domain, op_type) in kernels or (domain, op_type) in schemas:
            return None
        return f"onnxruntime has no {op_type} in domain '{domain}'"

    def visit(nodes) -> None:
        for node in nodes:
            domain = "" if node.domain in _DEFAULT else node.domain
            why = judge(node.op_type, domain)
            if why is not None:
                entry = found.setdefault((domain, node.op_type), [node.name, 0, why])
                entry[1] += 1
            for sub in subgraphs(node):
                visit(sub.node)

    visit(model.graph.node)
    for function in model.functions:
        visit(function.node)
    return [UnsupportedOp(op, domain, name, count, why) for (domain, op), (name, count, why) in found.items()]


def describe_unsupported(ops: list[UnsupportedOp], limit: int = 3) -> str:
    """``op Mystery of domain 'acme.ops' (node 'm', 2 nodes): no kernel ...; ...`` for messages."""
    version = _registry()[3]
    shown = []
    for op in ops[:limit]:
        where = f"domain '{op.domain}'" if op.domain else "the default ONNX domain"
        nodes = f"node '{op.node}'" + (f" and {op.count - 1} more" if op.count > 1 else "")
        shown.append(f"op {op.op_type} of {where} ({nodes}): {op.why}")
    more = len(ops) - limit
    return f"onnxruntime {version} cannot run " + "; ".join(shown) + (f"; and {more} more op type(s)" if more > 0 else "")
