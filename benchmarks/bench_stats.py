"""Benchmark: ``fp16guard stats`` against a plain FP32 onnxruntime pass, whole processes, on two
kinds of VGG-19 side by side.

What it uses (in a work folder, default a temporary one):

* ``stored``: ``vgg19.onnx``, a VGG-19-shaped FP32 model built here, opset 17, input ``x``
  [N, 3, 224, 224] (dynamic batch): 16 Conv 3x3 (pad 1) each followed by Relu, in blocks of
  2-2-4-4-4 convolutions (64-128-256-512-512 channels) each closed by MaxPool 2x2; Flatten; Gemm
  25088->4096, Relu, Gemm 4096->4096, Relu, Gemm 4096->1000. No normalisation. 143.7 M parameters
  (575 MB) stored in the file, He-initialised random weights (seeded).
* ``constant``: ``light_vgg19.onnx``, the ONNX project's VGG-19 test model as shipped in the
  ``onnx`` package (``onnx/backend/test/data/light``, 9 KB): opset 9, IR 3, input ``data_0``
  [1, 3, 224, 224] (static batch 1), the same 143.7 M parameters produced at load time by 36
  ConstantOfShape nodes, plus Dropout and Softmax.
* ``shards-<kind>/s<i>.npz``: shards of ``--samples-per-shard`` samples (default 2) of N(0, 1)
  inputs (the batch-1 model runs them one sample per call, in both processes).

Then, per kind, ``--repeats`` times, alternating, it runs as separate processes and measures wall
time and peak RSS of each child (``os.wait4`` rusage of that very child):

* plain: ``python -c`` that creates an onnxruntime session from the model path (default
  options, CPU) and runs each shard once (in slices of the model's static batch, if any);
* stats: ``python -m fp16guard.cli.main stats <model> --calib <shards> --out ...``.

It prints the medians and the ratios stats/plain per kind for ``--shards`` shards (default 2),
and the peak RSS of the stats process for 2 and for 8 shards of the stored model (memory must
not grow with shards). Targets (issue 8): at most 1.2x the time and 1.1x the peak memory.

Usage:
    .venv/bin/python -m benchmarks bench_stats [--repeats 3] [--shards 2] [--kinds stored constant] [--workdir DIR] [--label L]

The printed lines and the medians go to ``benchmarks/results/bench_stats-DATE-MACHINE[-L].{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "fp16guard stats against a plain onnxruntime pass (whole processes, VGG-19): wall time and peak RSS"

PLAIN = r"""
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
names = {i.name for i in s.get_inputs()}
lead = s.get_inputs()[0].shape[0]
for path in sys.argv[2:]:
    with np.load(path) as z:
        feeds = {k: z[k] for k in z.files if k in names}
    n = next(iter(feeds.values())).shape[0]
    step = lead if isinstance(lead, int) and lead > 0 else n
    for i in range(0, n, step):
        s.run(None, {k: v[i : i + step] for k, v in feeds.items()})
"""

#: Where the time goes, inside one child process: session creation vs inference, both ways.
DETAIL = r"""
import sys, time, numpy as np, onnxruntime as ort
from fp16guard.io.shards import ShardRef
from fp16guard.stats.collect import StatsSession
model, shards = sys.argv[1], sys.argv[2:]
feeds = []
for p in shards:
    with np.load(p) as z:
        feeds.append({k: z[k] for k in z.files})
for rep in range(2):
    t0 = time.perf_counter(); s = ort.InferenceSession(model, providers=["CPUExecutionProvider"]); t1 = time.perf_counter()
    lead = s.get_inputs()[0].shape[0]
    for f in feeds:
        n = next(iter(f.values())).shape[0]
        step = lead if isinstance(lead, int) and lead > 0 else n
        for i in range(0, n, step): s.run(None, {k: v[i : i + step] for k, v in f.items()})
    t2 = time.perf_counter(); del s
    t3 = time.perf_counter(); st = StatsSession(model).__enter__(); t4 = time.perf_counter()
    for p in shards: st.run(ShardRef(p, p))
    t5 = time.perf_counter(); st.__exit__(None, None, None)
    print(f"  detail {rep + 1}: plain session {t1 - t0:5.2f} s + run {t2 - t1:5.2f} s | stats session {t4 - t3:5.2f} s + run {t5 - t4:5.2f} s (run ratio {(t5 - t4) / (t2 - t1):.2f}x)", flush=True)
"""

#: (out_channels, convs) per block; each block ends with a 2x2 max-pool.
VGG19_BLOCKS = [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)]


def build_vgg19(path: Path, seed: int = 0) -> int:
    """Write the VGG-19-shaped model to ``path``; return its parameter count."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    params = 0

    def weight(name, shape, fan_in):
        nonlocal params
        w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))).astype(np.float32)
        params += w.size
        inits.append(numpy_helper.from_array(w, name))
        return name

    x, cin, k = "x", 3, 0
    for b, (cout, convs) in enumerate(VGG19_BLOCKS, start=1):
        for c in range(1, convs + 1):
            k += 1
            name = f"conv{b}_{c}"
            w = weight(f"{name}.w", (cout, cin, 3, 3), cin * 9)
            bias = weight(f"{name}.b", (cout,), 1e12)
            nodes.append(helper.make_node("Conv", [x, w, bias], [name], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [name], [f"relu{b}_{c}"], name=f"relu{b}_{c}"))
            x, cin = f"relu{b}_{c}", cout
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{b}"], name=f"pool{b}", kernel_shape=[2, 2], strides=[2, 2]))
        x = f"pool{b}"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    x = "flat"
    for i, (fin, fout) in enumerate([(25088, 4096), (4096, 4096), (4096, 1000)], start=6):
        w = weight(f"fc{i}.w", (fout, fin), fin)
        bias = weight(f"fc{i}.b", (fout,), 1e12)
        nodes.append(helper.make_node("Gemm", [x, w, bias], [f"fc{i}"], name=f"fc{i}", transB=1))
        x = f"fc{i}"
        if i < 8:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "vgg19",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return params


def light_vgg19(path: Path) -> Path:
    """Copy the ONNX project's ConstantOfShape-weights VGG-19 test model to ``path``."""
    import shutil

    import onnx.backend.test

    src = Path(onnx.backend.test.__file__).parent / "data" / "light" / "light_vgg19.onnx"
    if not src.is_file():
        raise SystemExit(f"{src} is missing; expected the onnx package's light test models (onnx >= 1.15)")
    shutil.copyfile(src, path)
    return path


def make_shards(folder: Path, count: int, samples: int, seed: int = 1, name: str = "x") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        p = folder / f"s{i}.npz"
        if not p.exists():
            np.savez(p, **{name: rng.standard_normal((samples, 3, 224, 224), dtype=np.float32)})
        paths.append(p)
    return paths


def measure(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB) of that child process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024.0  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks bench_stats", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shards", type=int, default=2, help="shards in the side-by-side comparison")
    ap.add_argument("--samples-per-shard", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", choices=["stored", "constant"], default=["stored", "constant"], help="which VGG-19 models to measure")
    ap.add_argument("--workdir", default=None, help="keep the models and shards here (reused if present; default a temporary folder, removed)")
    ap.add_argument("--detail", action="store_true", help="also split session creation from inference (one child process)")
    ap.add_argument("--skip-scaling", action="store_true", help="skip the 2-vs-8-shards memory check")
    ap.add_argument("--label", default=None, help="suffix of the result files' names")
    ap.add_argument("--results", default=None, help="folder for the result files (default benchmarks/results)")
    args = ap.parse_args(argv)
    log = bench_results.Log(bench_results.context("bench_stats", argv))
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fp16guard-bench-"))
    try:
        with log.capture():
            summary = _run(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)  # a 548 MiB model and its shards
    imports = summary.pop("imports_s")
    record = {"medians": {kind: {k: {"wall_s": w, "peak_rss_mib": m} for k, (w, m) in med.items()} for kind, med in summary.items()},
              "import_s": imports}
    log.save(None, None, record, label=args.label, results_dir=args.results)
    return 0


def _run(args, work: Path) -> dict:
    """The measurement; prints as it goes. Returns kind -> {plain|stats: (median wall s, median peak
    RSS MiB)}, and ``imports_s``: median seconds of ``python -c "import X"`` per module set."""
    work.mkdir(parents=True, exist_ok=True)
    models = {}
    if "stored" in args.kinds:
        model = work / "vgg19.onnx"
        if not model.exists():
            # Built in a child process: Linux carries a process's peak RSS across fork and exec, so
            # a driver that held the model would inflate every child's measured peak.
            code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_stats as b; print(b.build_vgg19(b.Path({str(model)!r})))"
            t = time.perf_counter()
            params = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
            print(f"built {model} ({params / 1e6:.1f} M parameters, {model.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s")
        models["stored"] = (model, make_shards(work / "shards-stored", max(8, args.shards), args.samples_per_shard, name="x"))
    if "constant" in args.kinds:
        model = work / "light_vgg19.onnx"
        if not model.exists():
            light_vgg19(model)
        models["constant"] = (model, make_shards(work / "shards-constant", args.shards, args.samples_per_shard, name="data_0"))
    driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"driver peak RSS {driver_rss:.0f} MiB (a child's peak cannot read below this)")
    py = sys.executable

    def plain_cmd(model, shards):
        return [py, "-c", PLAIN, str(model), *map(str, shards)]

    def stats_cmd(model, shards):
        return [py, "-m", "fp16guard.cli.main", "stats", str(model), "--calib", *map(str, shards), "--out", str(work / "stats.parquet")]

    summary = {}
    for kind, (model, shards_all) in models.items():
        shards = shards_all[: args.shards]
        results: dict[str, list[tuple[float, float]]] = {"plain": [], "stats": []}
        for r in range(args.repeats):
            for name, cmd in (("plain", plain_cmd(model, shards)), ("stats", stats_cmd(model, shards))):
                wall, rss = measure(cmd)
                results[name].append((wall, rss))
                print(f"  {kind:<8} run {r + 1} {name:<5} wall {wall:6.2f} s  peak RSS {rss:7.0f} MiB", flush=True)
        summary[kind] = {k: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v)) for k, v in results.items()}
        if args.detail:
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            # Captured and printed here, so that the lines reach the results file too.
            print(subprocess.run([py, "-c", DETAIL, str(model), *map(str, shards)], check=True, env=env, capture_output=True, text=True).stdout, end="")
    samples = args.shards * args.samples_per_shard
    print(f"\n{args.shards} shards x {args.samples_per_shard} samples ({samples} samples), medians of {args.repeats}:")
    print(f"  {'model':<9} {'plain wall':>10} {'stats wall':>10} {'ratio':>6}   {'plain RSS':>9} {'stats RSS':>9} {'ratio':>6}")
    for kind, med in summary.items():
        (pw, pm), (sw, sm) = med["plain"], med["stats"]
        print(f"  {kind:<9} {pw:9.2f}s {sw:9.2f}s {sw / pw:5.2f}x   {pm:6.0f} MiB {sm:5.0f} MiB {sm / pm:5.2f}x")
    print("  targets: wall <= 1.20x, peak RSS <= 1.10x")

    if not args.skip_scaling and "stored" in models:
        model, shards_all = models["stored"]
        few = measure(stats_cmd(model, shards_all[:2]))[1]
        many = measure(stats_cmd(model, shards_all[:8]))[1]
        print(f"  stats peak RSS (stored), 2 shards: {few:.0f} MiB; 8 shards: {many:.0f} MiB ({many / few:.2f}x)")
    # Fixed start-up of a whole process: what a plain pass imports against what fp16guard adds.
    imports = {}
    for what in ("onnxruntime, numpy", "onnx", "ml_dtypes"):
        imports[what] = statistics.median(measure([py, "-c", f"import {what}"])[0] for _ in range(args.repeats))
        print(f"  python -c 'import {what}': {imports[what]:.2f} s (median of {args.repeats})")
    summary["imports_s"] = imports
    print(f"work folder {work}")
    return summary
