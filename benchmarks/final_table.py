"""One table per issue 17's "Done when": a ``real_models.lib_run`` result joined with a
``gpu_gain`` result (per model: FP32 nodes, FP16 share of FLOPs, gate, holdout error, seconds,
GPU gain kept at batch 1 and 16).

    .venv/bin/python -m benchmarks final_table CPU.json [CPU2.json ...] --gpu GPU.json [--gpu GPU2.json] --out FILE.md

Every input keeps its own date, machine, commit and command in the table's head (the GPU runs'
with their load average); this step measures nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SUMMARY = "One table: a real_models_lib result joined with gpu_gain results (FP32 nodes, error, GPU gain kept)"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import results as bench_results  # noqa: E402
from benchmarks.real_models.lib_run import row_cells  # noqa: E402


def _gpu_cells(m: dict | None, missing: str = "not timed") -> tuple[str, str, str]:
    if not m:
        return missing, missing, ""
    if m.get("error"):
        return f"error: {m['error'][:80]}", "", ""
    cells, notes = {}, []
    for row in m.get("batches") or []:
        if row.get("same_as_previous"):
            cells[row["batch"]] = "same as batch 1 (no batch axis / static batch)"
            continue
        speed = f"FP16 {row['fp16_speedup']:.2f}×, artifact {row['artifact_speedup']:.2f}×"
        cells[row["batch"]] = f"{row['gain_text']} ({speed})"
        if row.get("real_batch") is not None and row["real_batch"] != row["batch"]:
            notes.append(f"batch {row['batch']} runs at {row['real_batch']}")
    if m.get("artifact_matches_cpu_run") is False:
        notes.append("artifact rebuilt on the GPU machine differs from the CPU run's")
    return cells.get(1, "—"), cells.get(16, "—"), "; ".join(notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks final_table", description=__doc__.split("\n\n")[0])
    p.add_argument("cpu", nargs="+")
    p.add_argument("--gpu", action="append", default=[])
    p.add_argument("--out")
    p.add_argument("--gpu-missing", default="not timed", help="cell text for models without a GPU figure")
    p.add_argument("--note", action="append", default=[], help="a line added under the header")
    args = p.parse_args(argv)
    cpu_records = [bench_results.read_json(c, "a real_models_lib result (JSON)") for c in args.cpu]
    gpu = {}
    gpu_heads = []
    for g in args.gpu:
        r = bench_results.read_json(g, "a gpu_gain time result (JSON)")
        ctx = r.get("context") or {}
        run = f"; {ctx['date']}, commit {ctx['commit']}, load {ctx['load_average']}, `{ctx['command']}`" if ctx else ""
        gpu_heads.append(f"{r.get('device')}, onnxruntime-gpu {r.get('onnxruntime')} (`{g}`{run})")
        for m in r["models"]:
            gpu[m["name"]] = m
    lines = ["# Real models with default settings — CPU verification and GPU gain kept", ""]
    for rec in cpu_records:
        lines.append(f"- CPU run: {rec['when']}, {rec['machine']}; commit {rec['commit']}; `{rec['command']}`")
    for h in gpu_heads:
        lines.append(f"- GPU timing: {h}")
    for n in args.note:
        lines.append(f"- {n}")
    lines += ["", "gain kept = (t_fp32 − t_artifact) / (t_fp32 − t_all-FP16), medians with IOBinding, FP32 at onnxruntime's default TF32;",
              "given only where all-FP16 is ≥10% faster than FP32. Holdout error: worst max|cand − fp32| / max|fp32| over the outputs",
              "(non-finite shown as such). Seconds: stats + plan/search + build + verify on the CPU machine above.", "",
              "| model | FP32 nodes / total | FP16 share of FLOPs | gate | verdict | holdout error | seconds | gain kept, batch 1 | gain kept, batch 16 | search |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for rec in cpu_records:
        for r in rec["results"]:
            c = row_cells(r)
            if "error" in c:
                lines.append(f"| {c['model']} | harness/tool error: {c['error'][:150].replace('|', '/')} | | | | | | | | |")
                continue
            b1, b16, note = _gpu_cells(gpu.get(r["name"]), args.gpu_missing)
            if note:
                notes.append(f"- {r['name']}: {note}")
            gate = "numeric 0.02 / cos 0.999" if c["gate"].startswith("numeric: max rel. error ≤ 0.02, cosine ≥ 0.999") else c["gate"]
            lines.append(f"| {c['model']} | {c['fp32']} | {c['share_flops']} | {gate} | {c['verdict']} | {c['holdout']} | {c['seconds']} | {b1} | {b16} | {c['search']} |")
    if notes:
        lines += ["", *notes]
    text = "\n".join(lines) + "\n"
    if args.out:
        from fp16guard.io import atomic

        atomic.write_text(args.out, text)
    print(text)
    return 0
