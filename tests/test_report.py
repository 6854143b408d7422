"""report.html: content checks on a real run's statistics and plan, and a real headless browser."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from fp16guard.report.html import render_report


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Statistics and plan of the demo example, computed by the real pipeline (onnxruntime)."""
    from fp16guard import examples
    from fp16guard.io.shards import discover_shards
    from fp16guard.io.model import load_model
    from fp16guard.plan.planner import make_plan
    from fp16guard.settings import PlanSettings
    from fp16guard.stats.collect import reduce_stats, shard_stats

    d = tmp_path_factory.mktemp("demo")
    model_path = examples.save_model("demo", d / "model.onnx")
    examples.write_shards("demo", d / "calib", 2, 4, seed=1)
    tables = [shard_stats(model_path, ref) for ref in discover_shards([str(d / "calib")])]
    stats = reduce_stats(tables)
    plan = make_plan(load_model(model_path), stats, PlanSettings()).to_dict()
    verification = {
        "passed": False,
        "reason": "output 'y': max_rel_error 0.31 > 0.02",
        "outputs": {"y": {"max_abs_error": 1.5, "max_rel_error": 0.31, "cosine": 0.97, "nonfinite": 0, "passed": False}, "z<&>": {"max_abs_error": 0.0, "max_rel_error": 0.0, "cosine": 1.0, "nonfinite": 0, "passed": True}},
    }
    manifest = {"name": "demo", "version": "3", "run_id": "r-1", "created": "2026-01-02T03:04:05Z", "trigger": {"type": "schedule"},
                "inputs": {"model": {"location": str(model_path), "sha256": "ab" * 32}, "calibration": [{"location": "c.npz", "sha256": "cd" * 32, "computed_by": "flow-9"}]},
                "versions": {"onnx": "1.23"}}
    return stats, plan, verification, manifest


def test_report_content(demo_run):
    stats, plan, verification, manifest = demo_run
    html = render_report(stats, plan, verification, manifest)
    assert plan["fp32_nodes"], "the demo model must need FP32 nodes for this test to mean anything"
    # Self-contained: no external reference of any kind.
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", html, re.I)
    assert "url(http" not in html and "<script" not in html.lower()
    # One bar per tensor, in graph order, with the two reference lines.
    assert html.count("<rect x=") == stats.num_rows + 1  # + the plot background
    assert "FP16 max 65504" in html and f"threshold {plan['threshold']:g}" in html
    # Bars of FP32 outputs are red; every FP32 node appears with its reason.
    red = re.findall(r'fill="#d62728"><title>#\d+ ([^ ]+) ', html)
    assert set(red) == {o for n in plan["fp32_nodes"] for o in n["outputs"]} & set(stats.column("tensor").to_pylist())
    for node in plan["fp32_nodes"]:
        assert f"<code>{node['name']}</code>" in html and node["reason"] in html
    # Verification table, escaped, with the failing row marked.
    assert "z&lt;&amp;&gt;" in html and '<tr class="bad"><td><code>y</code>' in html
    assert "rejected" in html and "flow-9" in html


def test_report_without_statistics_or_verification():
    html = render_report(None, {}, {}, {})
    assert "No statistics" in html and "No verification figures" in html and html.startswith("<!DOCTYPE html>")


def test_nonfinite_and_zero_tensors_are_drawn():
    rows = [
        {"tensor": "a", "producer": "", "op_type": "", "order": 0, "max_abs": 0.0, "nonfinite": 0},
        {"tensor": "b", "producer": "n1", "op_type": "Mul", "order": 1, "max_abs": float("inf"), "nonfinite": 3},
        {"tensor": "c", "producer": "n2", "op_type": "Add", "order": 2, "max_abs": 2e5, "nonfinite": 0},
    ]
    html = render_report(rows, {"threshold": 100.0, "fp32_nodes": [{"name": "n2", "op_type": "Add", "outputs": ["c"], "reason": "output_above_threshold", "details": ["input 'b' has non-finite"]}]}, {}, {})
    assert "max |x| = non-finite" in html and "▲" in html
    assert 'fill="#ff9f1c"><title>#1 b' in html  # read by the FP32 node n2 → orange


# ----------------------------------------------------------------------------- headless browser

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) into rows of pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


@pytest.mark.slow
def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    stats, plan, verification, manifest = demo_run
    page = tmp_path / "report.html"
    page.write_text(render_report(stats, plan, verification, manifest))
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 0, proc.stderr[-2000:]
    if os.environ.get("FP16GUARD_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["FP16GUARD_KEEP_SCREENSHOT"])
    width, bpp, rows = _png_pixels(shot)
    assert width == 1200 and len(rows) >= 1000

    def count(y0: int, y1: int, pred) -> int:
        return sum(1 for row in rows[y0:y1] for x in range(0, width * bpp, bpp) if pred(row[x], row[x + 1], row[x + 2]))

    # The chart sits in the top ~600 px: it must hold red bars (FP32 outputs), blue bars (FP16)
    # and the dark-red 65504 line — a blank or broken SVG has none of them.
    red = count(0, 650, lambda r, g, b: r > 190 and g < 70 and b < 70)
    blue = count(0, 650, lambda r, g, b: b > 140 and r < 110 and 90 < g < 150)
    ink = count(0, 650, lambda r, g, b: r + g + b < 600)
    assert red > 200 and blue > 200 and ink > 5000, (red, blue, ink)


def test_names_are_escaped_by_the_template():
    # Autoescape: a node, tensor, output or run named like markup shows as text, never as markup.
    evil = "<script>alert(1)</script>"
    rows = [{"tensor": evil, "producer": evil, "op_type": "Mul", "order": 0, "max_abs": 7e4, "nonfinite": 0, "max_shard": evil}]
    plan = {"threshold": 100.0, "fp32_nodes": [{"name": evil, "op_type": "Mul", "outputs": [evil], "inputs": [], "reason": evil, "details": [evil, "b"]}]}
    verification = {"passed": False, "reason": evil, "outputs": {evil: {"kind": "float", "max_abs_error": 1.0, "max_rel_error": 0.5, "cosine": 0.9, "nonfinite": 0, "passed": False}}}
    manifest = {"name": evil, "version": "1", "run_id": evil, "trigger": {"type": evil}, "inputs": {"model": {"location": evil, "sha256": "ab"}}, "versions": {evil: evil}}
    html = render_report(rows, plan, verification, manifest)
    assert "<script" not in html.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<code>{escaped}</code>" in html  # node, tensor, output and run id cells
    assert f"<title>{escaped} / 1 — fp16guard report</title>" in html
    assert f"{escaped}<br>b" in html  # details keep their line breaks, each escaped
    assert html.count(escaped) >= 10


def test_template_ships_with_the_package():
    # The template is package data: present where the package is, and named in pyproject.
    from importlib.resources import files

    assert files("fp16guard.report").joinpath("templates/report.html.j2").is_file()
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"templates/*.j2"' in text and '"jinja2' in text


def _many_fp32_nodes() -> dict:
    same = "final_ln is 1.07 off FP32 when this node is FP16"
    nodes = [{"name": f"layer{i}/attention/very_long_scope_name_without_spaces_{i}/MatMul", "op_type": "MatMul" if i % 3 else "Add",
              "outputs": [f"t{i}"], "inputs": [], "reason": "repair", "details": [same, f"own detail {i}"]} for i in range(72)]
    nodes.append({"name": "ln", "op_type": "LayerNormalization", "outputs": ["o"], "inputs": [], "reason": "output_above_threshold", "details": ["max |x| 9e4"]})
    return {"threshold": 1e4, "fp32_nodes": nodes}


def test_fp32_nodes_are_grouped_by_reason_with_counts():
    # Issue 19 item 6: one group per reason with its count, expandable; a sentence shared by the
    # whole group is said once, not once per node.
    html = render_report(None, _many_fp32_nodes(), {}, {})
    groups = re.findall(r'<details class="fp32-group"><summary><b>([^<]+)</b>: (\d+) nodes? \(([^)]*)\)</summary>', html)
    assert groups == [("repair", "72", "MatMul 48, Add 24"), ("output_above_threshold", "1", "LayerNormalization 1")]
    assert html.count("final_ln is 1.07 off FP32") == 1
    assert html.count("own detail ") == 72 and "max |x| 9e4" in html
    assert "<h2>FP32 nodes (73)</h2>" in html


def test_tables_fit_1280_px_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    long = "output_" + "x" * 150
    figures = {"max_abs_error": 1.5, "max_rel_error": 0.31, "cosine": 0.97, "nonfinite": 0, "passed": False,
               **{f"extra_metric_with_a_long_name_{k}": 0.123456789 for k in range(8)}}
    verification = {"passed": False, "reason": "x", "outputs": {long: figures, "y": figures}}
    manifest = {"name": "m", "version": "1", "run_id": "r", "inputs": {"model": {"location": "/" + "d" * 300 + "/model.onnx", "sha256": "ab" * 32}}}
    page = tmp_path / "report.html"
    # A probe script (the report itself has none) writes the page's width into the DOM.
    probe = "<script>document.body.setAttribute('data-width', document.documentElement.scrollWidth)</script></body>"
    page.write_text(render_report(None, _many_fp32_nodes(), verification, manifest).replace("</body>", probe))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    width = re.search(r'data-width="(\d+)"', proc.stdout)
    assert width, proc.stderr[-2000:]
    assert int(width.group(1)) <= 1280, width.group(1)
