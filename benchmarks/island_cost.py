"""Benchmark: does the cost model of cost-aware islands pick the faster precision? (onnxruntime)

``fp16guard/plan/strategies/islands.py`` moves an FP16 run of memory-bound nodes between FP32
nodes to FP32 when its Casts cost at least what FP16 saves: ``CAST_COST * border tensors >=
FP16_SAVING * float slots`` (per element, in FP32 element-wise op times; docs/FOLDING.md). This
script checks that claim against timings; the constants were fitted from its H200 runs (the
first runs, 2026-12-02, measured the byte model 6 : 2 it replaced).

What it does (needs numpy, onnx, onnxruntime — onnxruntime-gpu on a GPU — and this repository on
``PYTHONPATH``; no Prefect, pyarrow or pydantic):

1. builds small graphs in code (fixed seeds), default ``[32, 64, 56, 56]`` (``--small``:
   ``[2, 8, 16, 16]`` for a CPU smoke run):

   * ``chain-k`` (k = 1..``--k-max``, default 10): ``x -> Conv3x3 -> [k memory-bound ops] -> Conv3x3 -> y``,
     the ops cycling through Sigmoid, Add(per-channel constant), Mul(per-channel constant),
     LeakyRelu, Relu, Tanh (Sigmoid first, so no Conv+activation fusion hides the run);
   * ``relu``: one Relu right after the first Conv (the usual ``Conv -> Relu -> Conv``; a
     Conv+Relu fusion candidate when the Relu is FP32);
   * ``residual-k`` (k = 1, 2, 4): the run starts with the residual ``Add(conv(x), x)`` — two
     tensors enter the run;

   each in two variants from :func:`fp16guard.graph.convert.to_mixed_precision`: **fp16-run**
   (both Convs FP32, the run FP16 with Casts at its borders) and **fp32-run** (everything FP32);
   and the reverse ``pinned-<op>``: ``FP16 Conv -> one cheap op -> FP16 Conv`` with the op
   (Softmax over channels, Sigmoid) **FP32 with Casts** against **FP16**: what an isolated FP32
   node costs;
2. asks :func:`fp16guard.plan.strategies.islands.merge_islands` for its decision on the plan whose
   ``fp32_nodes`` are the two Convs (moved to FP32, or kept FP16);
3. times every variant on ``--providers`` (default CUDA then CPU when the CUDA provider really
   loads, else CPU): IOBinding (input and output on the device, so no host copy is timed),
   ``--warmup`` runs, then ``--repeats`` timed runs in ``--rounds`` interleaved rounds; the
   median. CUDA options as ``benchmarks/fold_latency.py``: ``prefer_nhwc=1`` (``--no-nhwc``),
   TF32 at onnxruntime's default (``--no-tf32``);
4. profiles every variant with onnxruntime's profiler (``enable_profiling``; events with
   ``cat == "Node"`` and a name ending in ``_kernel_time``, ``dur`` in µs; the median over
   ``--profile-runs`` runs per node) and sums Cast nodes, the run's nodes, Convs and the rest.
   The CUDA provider launches kernels asynchronously, so a node's profiled time would be its
   launch time only: on CUDA the profiling runs in a child process with
   ``CUDA_LAUNCH_BLOCKING=1`` (every launch waits for its kernel; each node's time then includes
   a few µs of launch), unless ``--no-blocking-profile``;
5. prints the table (case, k, border tensors, float slots, predicted decision, measured fp16-run
   and fp32-run ms, measured winner, agree), the reverse cases, and the empirical figures the
   model's constants stand for, per element: a Cast against an FP32 element-wise op (model:
   CAST_COST), an FP16 element-wise op against FP32 (model: 1 - 2 * FP16_SAVING, two slots per
   single-input op), and the break-even ``cast / saving per slot`` (model: CAST_COST /
   FP16_SAVING). The figures to use come from the timed
   medians (slopes over the chain length, and a least-squares fit of ``fp16-run - fp32-run =
   a * borders - b * slots``); the same from the profiled node times are printed beside them,
   with the per-node launch cost that inflates them.

Run on the GPU machine, from the repository root::

    PYTHONPATH=. python3 -m benchmarks island_cost --out island_cost.txt --json island_cost.json

CPU smoke run (< 1 min; a CPU latency is not FP16's: the CPU provider computes most FP16 ops in
FP32 behind casts)::

    PYTHONPATH=. .venv/bin/python -m benchmarks island_cost --small

Side effects: a temporary folder (models and profiler files, removed); ``--out`` (the table) and
``--json`` (every figure and the environment), written atomically.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this repository's fp16guard

from benchmarks.harness import gpu, timing  # noqa: E402
from benchmarks.harness import results as bench_results  # noqa: E402
from benchmarks.harness.gpu import CPU, CUDA  # noqa: E402

SUMMARY = "Cost model of cost-aware islands against timings: does it pick the faster precision?"
#: The memory-bound ops of the chain cases, in order (Sigmoid first: no Conv fusion takes it).
CHAIN_OPS = ("Sigmoid", "Add", "Mul", "LeakyRelu", "Relu", "Tanh")
RESIDUAL_KS = (1, 2, 4)
PINNED_OPS = ("Softmax", "Sigmoid")
_CONV_OPS = ("Conv", "FusedConv", "NhwcConv", "NhwcFusedConv")
#: Casts of the graph input and output (a pinned case's FP16 Convs): the same in both variants.
_IO_CASTS = ("x__cast_to_", "y__cast_to_")


@dataclass
class Case:
    """One graph and its two variants."""

    name: str
    kind: str  # "chain", "residual" or "pinned"
    ops: list[str]
    model: onnx.ModelProto
    convs: list[str]
    run: list[str]  # the nodes whose precision differs between the variants
    variants: dict[str, onnx.ModelProto] = field(default_factory=dict)
    fp32_sets: dict[str, list[str]] = field(default_factory=dict)


# ------------------------------------------------------------------------------- graphs


def build_graph(name: str, ops: list[str], shape: tuple[int, int, int, int], residual: bool = False, seed: int = 0) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """``x -> conv_in -> ops... -> conv_out -> y`` at ``shape`` = (N, C, H, W).

    Convs are 3x3, padding 1, C -> C (He-initialised, seeded), so every tensor of the run has
    N*C*H*W elements. Add and Mul take a per-channel constant ``[1, C, 1, 1]``; LeakyRelu alpha
    0.1; Softmax is over the channels (axis 1). With ``residual`` the first op must be ``Add``
    and reads ``x`` as its second operand (a residual join: two tensors enter the run).

    Returns:
        (model, [conv_in, conv_out], the op node names in order). Opset 17, IR 8.
    """
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(tag: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), tag))
        return tag

    def conv(tag: str, src: str) -> str:
        weight = rng.standard_normal((c, c, 3, 3)) * np.sqrt(2.0 / (9 * c))
        bias = rng.standard_normal(c) * 0.1
        nodes.append(helper.make_node("Conv", [src, const(f"{tag}.w", weight), const(f"{tag}.b", bias)], [tag], name=tag, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        return tag

    t = conv("conv_in", "x")
    run: list[str] = []
    for i, op in enumerate(ops):
        tag = f"op{i}_{op.lower()}"
        attrs: dict = {}
        if op in ("Add", "Mul"):
            other = "x" if (residual and i == 0) else const(f"{tag}.c", rng.uniform(0.5, 1.5, (1, c, 1, 1)) if op == "Mul" else rng.standard_normal((1, c, 1, 1)) * 0.1)
            inputs = [t, other]
        else:
            inputs = [t]
        if op == "LeakyRelu":
            attrs["alpha"] = 0.1
        if op == "Softmax":
            attrs["axis"] = 1
        nodes.append(helper.make_node(op, inputs, [tag], name=tag, **attrs))
        run.append(tag)
        t = tag
    nodes.append(helper.make_node("Conv", [t, const("conv_out.w", rng.standard_normal((c, c, 3, 3)) * np.sqrt(2.0 / (9 * c))), const("conv_out.b", rng.standard_normal(c) * 0.1)], ["y"], name="conv_out", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, c, h, w])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, ["conv_in", "conv_out"], run


def build_cases(shape: tuple[int, int, int, int], k_max: int) -> list[Case]:
    """Every case with its two variants (see the module docstring)."""
    from fp16guard.graph.convert import to_mixed_precision

    specs: list[tuple[str, str, list[str], bool]] = []
    for k in range(1, k_max + 1):
        specs.append((f"chain-{k}", "chain", [CHAIN_OPS[i % len(CHAIN_OPS)] for i in range(k)], False))
    specs.append(("relu", "chain", ["Relu"], False))
    for k in RESIDUAL_KS:
        specs.append((f"residual-{k}", "residual", ["Add"] + [CHAIN_OPS[i % len(CHAIN_OPS)] for i in range(k - 1)], True))
    for op in PINNED_OPS:
        specs.append((f"pinned-{op.lower()}", "pinned", [op], False))
    cases = []
    for seed, (name, kind, ops, residual) in enumerate(specs):
        model, convs, run = build_graph(name, ops, shape, residual, seed)
        case = Case(name, kind, ops, model, convs, run)
        if kind == "pinned":
            sets = {"op-fp32": set(run), "op-fp16": set()}
        else:
            sets = {"fp16-run": set(convs), "fp32-run": set(convs) | set(run)}
        for variant, fp32 in sets.items():
            case.variants[variant] = to_mixed_precision(model, fp32)
            case.fp32_sets[variant] = sorted(fp32)
        cases.append(case)
    return cases


# --------------------------------------------------------------------------- decision


def _islands():
    """The ``islands`` module; loaded from its file when the package's imports need more than numpy/onnx.

    ``fp16guard.plan.strategies`` imports the planner (pyarrow, pydantic); ``islands.py`` itself
    needs only onnx and :mod:`fp16guard.graph.info`, which is all a bare GPU image has.
    """
    try:
        from fp16guard.plan.strategies import islands

        return islands
    except ImportError:
        path = Path(__file__).resolve().parents[1] / "fp16guard" / "plan" / "strategies" / "islands.py"
        spec = importlib.util.spec_from_file_location("_fp16guard_islands", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def decide(case: Case) -> dict:
    """The cost model's decision for the run of ``case`` (plan: the Convs FP32, or for a pinned
    case the op FP32), with the border tensors and float slots it counted."""
    fp32 = case.convs if case.kind != "pinned" else case.run
    ops = {n.name: n.op_type for n in case.model.graph.node}
    plan = {"fp32_nodes": [{"name": n, "op_type": ops[n], "reason": "benchmark", "reasons": ["benchmark"]} for n in fp32], "counts": {}}
    islands = _islands()
    result = islands.merge_islands(case.model, plan)
    run = set(case.run)
    moved = [m for m in result["islands"] if run & set(m["nodes"])]
    borders, slots = _count(case)
    if case.kind == "pinned":
        # The model never moves a run holding a Conv, and leaves an isolated FP32 node as it is.
        predicted = "op-fp16" if moved else "op-fp32"
    else:
        predicted = "fp32-run" if moved else "fp16-run"
    return {"predicted": predicted, "moved": moved, "borders": borders, "slots": slots, "cast_cost": islands.CAST_COST * borders, "fp16_saving": islands.FP16_SAVING * slots}


def _count(case: Case) -> tuple[int, int]:
    """Border tensors and float slots of the run, counted as islands.py does (FLOAT,
    non-initializer tensors; a border tensor is produced or read outside the run)."""
    graph = case.model.graph
    inits = {t.name for t in graph.initializer}
    run = set(case.run)
    producer = {o: n.name for n in graph.node for o in n.output}
    readers: dict[str, set[str]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.name)
    borders, slots = set(), 0
    for n in graph.node:
        if n.name not in run:
            continue
        for t in list(n.input) + list(n.output):
            if not t or t in inits:
                continue
            slots += 1
            if producer.get(t) not in run or readers.get(t, set()) - run:
                borders.add(t)
    return len(borders), slots


# ----------------------------------------------------------------------- onnxruntime


def time_variants(models: dict[str, onnx.ModelProto], x: np.ndarray, providers: list, args) -> dict[str, float]:
    """Median ms of each variant; the variants are timed in ``args.rounds`` interleaved rounds
    (2 untimed runs before each turn) so slow drift of the machine falls on both alike."""
    runs = {name: gpu.BoundSession(gpu.session(m, providers, args.opt_level)).bind({"x": x}).run for name, m in models.items()}
    per_round = max(1, args.repeats // args.rounds)
    return {name: t.median_ms for name, t in timing.interleaved(runs, args.warmup, args.rounds, per_round, rewarm=2).items()}


def parse_profile(path: str) -> dict[str, dict]:
    """Per node of the optimised graph: op, provider and median kernel µs over the profiled runs.

    Reads the events with ``cat == "Node"`` whose name ends in ``_kernel_time`` (``dur`` in µs).
    """
    events = json.loads(Path(path).read_text())
    if isinstance(events, dict):
        events = events.get("traceEvents", [])
    durs: dict[str, list[float]] = {}
    meta: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        durs.setdefault(node, []).append(float(e.get("dur", 0)))
        args = e.get("args", {})
        meta[node] = {"op": args.get("op_name", "?"), "provider": args.get("provider", "?")}
    return {node: {**meta[node], "us": statistics.median(v), "runs": len(v)} for node, v in durs.items()}


def profile_models(paths: dict[str, str], shape: list[int], providers: list, opt_level: str, runs: int, warmup: int, folder: str) -> dict[str, dict]:
    """Profile every model file in ``paths`` (``{key: path}``); returns ``{key: parse_profile}``."""
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    out = {}
    for key, path in paths.items():
        prefix = str(Path(folder) / f"prof_{key.replace('/', '__')}")
        bound = gpu.BoundSession(gpu.session(Path(path).read_bytes(), providers, opt_level, profile_prefix=prefix)).bind({"x": x})
        for _ in range(warmup + runs):
            bound.run()
        out[key] = parse_profile(bound.session.end_profiling())
    return out


def _profile_worker(spec_path: str) -> int:
    """Child-process entry: profile the models of a spec file, write the result next to it."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    spec = json.loads(Path(spec_path).read_text())
    providers = [tuple(p) if isinstance(p, list) else p for p in spec["providers"]]
    result = profile_models(spec["paths"], spec["shape"], providers, spec["opt_level"], spec["runs"], spec["warmup"], spec["folder"])
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def profile_all(cases: list[Case], shape: list[int], providers: list, args, folder: str) -> tuple[dict[str, dict], str]:
    """Profile every variant; on CUDA in a child with ``CUDA_LAUNCH_BLOCKING=1`` (see docstring).

    Returns:
        ``({"<case>/<variant>": {node: {op, provider, us, runs}}}, how)``.
    """
    paths = {}
    for case in cases:
        for variant, model in case.variants.items():
            path = Path(folder) / f"{case.name}__{variant}.onnx"
            path.write_bytes(model.SerializeToString())
            paths[f"{case.name}/{variant}"] = str(path)
    on_cuda = any((p[0] if isinstance(p, tuple) else p) == CUDA for p in providers)
    if not on_cuda or args.no_blocking_profile:
        how = "in process" + (" (CUDA launches asynchronous: node times are launch times)" if on_cuda else "")
        return profile_models(paths, shape, providers, args.opt_level, args.profile_runs, args.warmup, folder), how
    spec = {"paths": paths, "shape": shape, "providers": providers, "opt_level": args.opt_level, "runs": args.profile_runs, "warmup": args.warmup, "folder": folder, "result": str(Path(folder) / "profile.json")}
    spec_path = Path(folder) / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-m", "benchmarks", "island_cost", "--profile-worker", str(spec_path)], env=env, check=True, cwd=str(Path(__file__).resolve().parents[1]))
    return json.loads(Path(spec["result"]).read_text()), "child process with CUDA_LAUNCH_BLOCKING=1 (node times include kernel execution)"


def split_profile(nodes: dict[str, dict], run: list[str], pinned: bool = False) -> dict:
    """Profiled µs of one variant by class: Casts, the run's nodes, Convs, the rest.

    With ``pinned``, Casts of the graph input ``x`` and output ``y`` count as the rest: both
    variants of a pinned case have them (its Convs are FP16), and they are not the island's (in
    a residual case the Cast of ``x`` is one of the run's borders and counts as a Cast).

    A run node is recognised by its name (onnxruntime keeps node names; a node fused into
    another disappears, and the fused node — e.g. a FusedConv — counts where its op puts it).
    """
    out = {"cast_us": 0.0, "casts": 0, "run_us": 0.0, "run_nodes": 0, "conv_us": 0.0, "other_us": 0.0, "total_us": 0.0, "cpu_nodes": 0, "nodes": len(nodes)}
    run_set = set(run)
    for name, node in nodes.items():
        us = node["us"]
        out["total_us"] += us
        if node["provider"] == CPU:
            out["cpu_nodes"] += 1
        if node["op"] == "Cast" and not (pinned and name.startswith(_IO_CASTS)):
            out["cast_us"] += us
            out["casts"] += 1
        elif name in run_set:
            out["run_us"] += us
            out["run_nodes"] += 1
        elif node["op"] in _CONV_OPS:
            out["conv_us"] += us
        else:
            out["other_us"] += us
    return out


# ----------------------------------------------------------------------------- report


def _ratios(rows: list[dict], elements: int) -> dict:
    """Empirical costs per element (µs per million elements) the model's constants stand for.

    ``end_to_end`` (the figures to trust; from the timed medians): an FP32 and an FP16
    element-wise op are the slopes of the fp32-run and fp16-run times over k of the chain cases;
    a Cast is ``(fp16-run - fp32-run + k * (op32 - op16)) / 2`` per chain case (two Casts), the
    median; and a least-squares fit over every run case of ``fp16-run - fp32-run = a * borders -
    b * slots``. ``profile``: the same from the profiled node times (a per-node launch and
    synchronisation cost inflates every node alike under ``CUDA_LAUNCH_BLOCKING``, pulling these
    ratios towards 1; ``node_overhead_us`` estimates it as (profiled sum - timed median) / nodes).
    """
    per_m = 1e6 / elements  # µs per variant -> µs per million elements
    chains = sorted((r for r in rows if r["kind"] == "chain" and r["case"].startswith("chain-")), key=lambda r: r["k"])
    e2e: dict = {"chain_cases": len(chains)}
    if len(chains) >= 2:
        ks = np.array([r["k"] for r in chains], dtype=np.float64)
        op32 = float(np.polyfit(ks, [r["ms"]["fp32-run"] * 1e3 for r in chains], 1)[0]) * per_m
        op16 = float(np.polyfit(ks, [r["ms"]["fp16-run"] * 1e3 for r in chains], 1)[0]) * per_m
        cast = statistics.median((r["ms"]["fp16-run"] - r["ms"]["fp32-run"]) * 1e3 * per_m / 2 + r["k"] * (op32 - op16) / 2 for r in chains)
        e2e.update(_costs(cast, op32, op16))
    fit_rows = [r for r in rows if r["kind"] != "pinned"]
    if len(fit_rows) >= 2:
        a_mat = np.array([[r["borders"], -r["slots"]] for r in fit_rows], dtype=np.float64)
        b_vec = np.array([(r["ms"]["fp16-run"] - r["ms"]["fp32-run"]) * 1e3 * per_m for r in fit_rows], dtype=np.float64)
        (a, b), *_ = np.linalg.lstsq(a_mat, b_vec, rcond=None)
        e2e["fit"] = {"cases": len(fit_rows), "cast_per_border": float(a), "saving_per_slot": float(b), "break_even_slots_per_border": float(a / b) if a > 0 and b > 0 else None}
    cast, fp32_op, fp16_op, overhead = [], [], [], []
    for r in rows:
        for v, p in r["profile"].items():
            if p["nodes"]:
                overhead.append((p["total_us"] - r["ms"][v] * 1e3) / p["nodes"])
        if r["kind"] == "pinned":
            continue
        p16, p32 = r["profile"]["fp16-run"], r["profile"]["fp32-run"]
        if p16["casts"]:
            cast.append(p16["cast_us"] / p16["casts"] * per_m)
        # Only runs whose every node survived optimisation unfused in both variants.
        if r["kind"] == "chain" and p16["run_nodes"] == r["k"] and p32["run_nodes"] == r["k"]:
            fp16_op.append(p16["run_us"] / r["k"] * per_m)
            fp32_op.append(p32["run_us"] / r["k"] * per_m)
    med = lambda v: statistics.median(v) if v else None  # noqa: E731
    prof = _costs(med(cast), med(fp32_op), med(fp16_op))
    prof["node_overhead_us"] = med(overhead)
    islands = _islands()
    model = {"cast_over_fp32_op": islands.CAST_COST, "fp16_op_over_fp32_op": 1 - 2 * islands.FP16_SAVING, "break_even_slots_per_border": islands.CAST_COST / islands.FP16_SAVING}
    return {"unit": "us per million elements", "model": model, "end_to_end": e2e, "profile": prof}


def _costs(cast: float | None, op32: float | None, op16: float | None) -> dict:
    """Per-element costs and the ratios the byte model predicts (None where undefined)."""
    ok = cast is not None and op32 is not None and op16 is not None and op32 > 0
    return {
        "cast": cast, "fp32_op": op32, "fp16_op": op16,
        "cast_over_fp32_op": cast / op32 if ok else None,
        "fp16_op_over_fp32_op": op16 / op32 if ok else None,
        # An element-wise op has two float slots: the saving per slot is half the op's.
        "break_even_slots_per_border": cast / ((op32 - op16) / 2) if ok and op32 > op16 and cast > 0 else None,
    }


def _f(v, spec: str = ".3f", none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def report(rows: list[dict], ratios: dict, log: bench_results.Log, tie: float) -> None:
    """Print the tables through ``log``."""
    log.say("Runs between two FP32 Convs: the run FP16 (Casts at its borders) or FP32 (no Casts).")
    log.say("predicted: islands.merge_islands (moves the run to FP32 when CAST_COST*borders >= FP16_SAVING*slots); "
            f"'~' after agree: the two variants within {tie:.0%} of each other")
    log.say(f"{'case':<12} {'k':>2} {'ops':<30} {'bord':>4} {'slots':>5} {'cast:save':>9} {'predicted':>9} {'fp16-run ms':>11} {'fp32-run ms':>11} {'winner':>8} {'agree':>5}  "
            f"{'cast us':>8} {'run16 us':>8} {'run32 us':>8}")
    for r in rows:
        if r["kind"] == "pinned":
            continue
        ms16, ms32 = r["ms"]["fp16-run"], r["ms"]["fp32-run"]
        p16, p32 = r["profile"]["fp16-run"], r["profile"]["fp32-run"]
        log.say(f"{r['case']:<12} {r['k']:>2} {'+'.join(r['ops']):<30.30} {r['borders']:>4} {r['slots']:>5} {format(r['cast_cost'], 'g') + ':' + format(r['fp16_saving'], '.3g'):>9} "
                f"{r['predicted'][:4]:>9} {ms16:>11.4f} {ms32:>11.4f} {r['winner'][:4]:>8} {('yes' if r['agree'] else 'no') + ('~' if r['tie'] else ''):>5}  "
                f"{p16['cast_us']:>8.1f} {p16['run_us']:>8.1f} {p32['run_us']:>8.1f}")
    pinned = [r for r in rows if r["kind"] == "pinned"]
    if pinned:
        log.say("")
        log.say("Isolated cheap FP32 node between two FP16 Convs: the op FP32 (2 Casts) or FP16. The model keeps it FP32 (pinned for range).")
        log.say(f"{'case':<16} {'op-fp32 ms':>10} {'op-fp16 ms':>10} {'cost ms':>8} {'cost %':>7}  {'cast us':>8} {'op32 us':>8} {'op16 us':>8}")
        for r in pinned:
            a, b = r["ms"]["op-fp32"], r["ms"]["op-fp16"]
            pa, pb = r["profile"]["op-fp32"], r["profile"]["op-fp16"]
            log.say(f"{r['case']:<16} {a:>10.4f} {b:>10.4f} {a - b:>8.4f} {100 * (a - b) / b:>6.1f}%  {pa['cast_us']:>8.1f} {pa['run_us']:>8.1f} {pb['run_us']:>8.1f}")
    agree = [r for r in rows if r["kind"] != "pinned"]
    clear = [r for r in agree if not r["tie"]]
    log.say("")
    log.say(f"agreement: {sum(r['agree'] for r in agree)}/{len(agree)} cases; {sum(r['agree'] for r in clear)}/{len(clear)} outside the {tie:.0%} tie band")
    m, e, p = ratios["model"], ratios["end_to_end"], ratios["profile"]
    log.say("")
    log.say("What the model's constants stand for, per element (µs per million elements; model in FP32 element-wise op times):")
    log.say(f"{'':<34} {'Cast':>7} {'FP32 op':>8} {'FP16 op':>8} {'Cast/FP32op':>11} {'FP16op/FP32op':>13} {'break-even slots/border':>23}")
    log.say(f"{'model (islands.py constants)':<34} {'':>7} {'':>8} {'':>8} {m['cast_over_fp32_op']:>11.2f} {m['fp16_op_over_fp32_op']:>13.2f} {m['break_even_slots_per_border']:>23.2f}")
    for label, c in ((f"timed, chain slopes ({e['chain_cases']} cases)", e), ("profiled nodes (see note)", p)):
        log.say(f"{label:<34} {_f(c.get('cast'), '.3f'):>7} {_f(c.get('fp32_op'), '.3f'):>8} {_f(c.get('fp16_op'), '.3f'):>8} "
                f"{_f(c.get('cast_over_fp32_op'), '.2f'):>11} {_f(c.get('fp16_op_over_fp32_op'), '.2f'):>13} {_f(c.get('break_even_slots_per_border'), '.2f'):>23}")
    fit = e.get("fit")
    if fit:
        log.say(f"timed, least squares over {fit['cases']} run cases of fp16-run - fp32-run = a*borders - b*slots: a = {fit['cast_per_border']:.3f}, b = {fit['saving_per_slot']:.3f}, "
                f"break-even a/b = {_f(fit['break_even_slots_per_border'], '.2f')} slots per border (model {m['break_even_slots_per_border']:.2f})")
    log.say(f"note: profiled node times carry a per-node launch/synchronisation cost of about {_f(p.get('node_overhead_us'), '.1f')} µs "
            "((profiled sum - timed median) / nodes), which pulls the profiled ratios towards 1; the timed rows are the figures to use")


def _default_providers() -> list[str]:
    try:
        from fp16guard.runners.onnxrt import cuda_usable

        return [CUDA, CPU] if cuda_usable() else [CPU]
    except ImportError:  # pragma: no cover - the runner needs only numpy and onnxruntime
        return [CPU]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks island_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--providers", default=None, help="comma-separated onnxruntime providers (default: CUDAExecutionProvider,CPUExecutionProvider when CUDA really loads, else CPUExecutionProvider)")
    parser.add_argument("--small", action="store_true", help="batch 2, 8 channels, 16x16, few runs: a CPU smoke run")
    parser.add_argument("--batch", type=int, default=None, help="default 32 (2 with --small)")
    parser.add_argument("--channels", type=int, default=None, help="default 64 (8 with --small)")
    parser.add_argument("--size", type=int, default=None, help="height = width, default 56 (16 with --small)")
    parser.add_argument("--k-max", type=int, default=10, help="longest chain run (default 10: past the break-even measured on an H200)")
    parser.add_argument("--warmup", type=int, default=None, help="default 20 (2 with --small)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant, default 200 (10 with --small)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the repeats are split into")
    parser.add_argument("--profile-runs", type=int, default=None, help="profiled runs per variant, default 20 (3 with --small)")
    parser.add_argument("--tie", type=float, default=0.02, help="relative difference under which the variants count as a tie")
    parser.add_argument("--opt-level", choices=("all", "extended", "basic", "disable"), default="all", help="onnxruntime graph optimisation level")
    parser.add_argument("--no-nhwc", action="store_true", help="do not set prefer_nhwc=1 on the CUDA provider")
    parser.add_argument("--no-tf32", action="store_true", help="turn TF32 off in the CUDA provider")
    parser.add_argument("--no-blocking-profile", action="store_true", help="profile in this process even on CUDA (node times are then launch times)")
    parser.add_argument("--out", default=None, help="write the table here")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--profile-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_worker:
        return _profile_worker(args.profile_worker)

    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # onnxruntime-gpu 1.31 warns once per CUDA session otherwise
    small = args.small
    args.batch = args.batch or (2 if small else 32)
    args.channels = args.channels or (8 if small else 64)
    args.size = args.size or (16 if small else 56)
    args.warmup = args.warmup if args.warmup is not None else (2 if small else 20)
    args.repeats = args.repeats or (10 if small else 200)
    args.profile_runs = args.profile_runs or (3 if small else 20)
    args.rounds = max(1, min(args.rounds, args.repeats))
    names = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else _default_providers()
    unknown = [p for p in names if p not in ort.get_available_providers()]
    if unknown or not names:
        print(f"providers {unknown or names} are not available in this onnxruntime ({', '.join(ort.get_available_providers())}); expected a comma-separated list of those", file=sys.stderr)
        return 2
    providers = gpu.providers(names, nhwc=not args.no_nhwc, tf32=not args.no_tf32)
    shape = (args.batch, args.channels, args.size, args.size)
    elements = int(np.prod(shape))
    started = time.time()
    log = bench_results.Log(bench_results.context("island_cost", argv, device=gpu.device_description(providers)))
    log.say(f"fp16guard island cost check — onnxruntime {ort.__version__}")
    log.say(f"providers {providers}; graph optimisation {args.opt_level}; tensors {list(shape)} ({elements} elements); "
            f"IOBinding, {args.warmup} warm-up, median of {args.repeats} runs in {args.rounds} interleaved rounds")

    cases = build_cases(shape, args.k_max)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    rows = []
    for case in cases:
        decision = decide(case)
        ms = time_variants(case.variants, x, providers, args)
        a, b = list(ms)
        winner = a if ms[a] <= ms[b] else b
        rows.append({
            "case": case.name, "kind": case.kind, "k": len(case.ops), "ops": case.ops,
            "fp32_nodes": case.fp32_sets, **decision, "ms": ms, "winner": winner,
            "agree": winner == decision["predicted"], "tie": abs(ms[a] - ms[b]) <= args.tie * min(ms[a], ms[b]),
        })
    with tempfile.TemporaryDirectory(prefix="fp16guard-island-cost-") as folder:
        profiles, how = profile_all(cases, list(shape), providers, args, folder)
    for case, row in zip(cases, rows):
        row["profile"] = {v: split_profile(profiles[f"{case.name}/{v}"], case.run, case.kind == "pinned") for v in case.variants}
        row["profile_nodes"] = {v: profiles[f"{case.name}/{v}"] for v in case.variants}
    log.say(f"profile: onnxruntime profiler, median µs per node over {args.profile_runs} runs, {how}")
    cpu_nodes = sum(p["cpu_nodes"] for r in rows for p in r["profile"].values())
    if CUDA in names and cpu_nodes:
        log.say(f"WARNING: {cpu_nodes} node(s) ran on the CPU provider inside CUDA sessions (see the JSON's profile_nodes)")
    log.say("")
    ratios = _ratios(rows, elements)
    report(rows, ratios, log, args.tie)
    log.say(f"({time.time() - started:.1f} s)")
    env = {"python": platform.python_version(), "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
           "providers": str(providers), "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "profile": how}
    log.save(args.out, args.json, {"args": vars(args), "env": env, "shape": list(shape), "rows": rows, "ratios": ratios})
    return 0

