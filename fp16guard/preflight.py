"""Checks run before a flow starts, so bad input fails fast and leaves no run behind.

What can be checked cheaply is checked here: the model loads, every calibration and holdout
location exists and holds shards, the chosen backend is usable (its ``preflight``), and every shard's arrays (read from the ``.npy`` headers only)
match the model's inputs in name, rank, static dimensions and dtype; then every shard's values
are read once for NaN/inf (the name, version and numeric bounds were checked by
:class:`RunParameters`). NaN/inf in FP32 *activations* can only be found by the statistics pass.
"""

from __future__ import annotations

from fp16guard.io.shards import check_layout, discover_shards, load_shard, peek_shard, prepare_feeds
from fp16guard.io.model import input_specs, load_graph
from fp16guard.settings import RunParameters
from fp16guard.verify.task_checks import check_gate_outputs


def preflight(params: RunParameters) -> None:
    """Raise the first UserError found in ``params``' model and data; return None if all fit."""
    from fp16guard.backends.registry import get_backend

    # e.g. TensorRTUnavailable names what to install, before any work is done
    get_backend(params.backend, params.providers).preflight()
    graph = load_graph(params.model)
    specs = input_specs(graph)
    # A --gate naming an output the model lacks is bad input, found before any work.
    check_gate_outputs(params.verify, [o.name for o in graph.graph.output])
    for role, paths in (("calibration", params.calib), ("holdout", params.holdout)):
        for ref in discover_shards(paths, role):
            check_layout(ref, peek_shard(ref), specs)
    # Values after every header: NaN/inf in an input shows here in seconds (one read of the
    # data, cheap next to the forward passes), not minutes later inside the flow.
    for role, paths in (("calibration", params.calib), ("holdout", params.holdout)):
        for ref in discover_shards(paths, role):
            prepare_feeds(ref, load_shard(ref), specs)
