"""A hand-written SVG chart of max |x| per tensor in graph order, on a log scale.

Pure Python, no plotting library: the report must be one self-contained HTML file, and an inline
``<svg>`` is both embedded and crisp at any zoom. One vertical bar per tensor (graph order left to
right), the FP16 limit (65504) and the plan threshold drawn as horizontal lines, bars coloured by
their relation to the FP32 nodes. Every bar carries a ``<title>`` so hovering names the tensor.
"""

from __future__ import annotations

import math
from html import escape

from fp16guard import FP16_MAX

__all__ = ["COLOR_FP16", "COLOR_FP32_IN", "COLOR_FP32_OUT", "COLOR_LIMIT", "COLOR_THRESHOLD", "max_abs_chart"]

#: Colours (also used by the report's legend).
COLOR_FP32_OUT = "#d62728"  # produced by a node kept in FP32
COLOR_FP32_IN = "#ff9f1c"  # read by a node kept in FP32 (docs/FACTS.md #3: the input-side rule)
COLOR_FP16 = "#4c78a8"  # everything else
COLOR_LIMIT = "#b00020"
COLOR_THRESHOLD = "#e07b00"

_W, _H = 1100, 420
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 20, 50


def max_abs_chart(rows: list[dict], threshold: float | None, fp32_outputs: set[str], fp32_inputs: set[str]) -> str:
    """Return an ``<svg>`` element (a string) charting ``max_abs`` of ``rows`` in list order.

    Args:
        rows: dicts with ``tensor``, ``max_abs`` (float; 0 or NaN allowed), optional
            ``nonfinite`` (count; > 0 draws the bar to the top with a ▲), ``producer``, ``op_type``.
        threshold: the plan threshold (dashed line), or None.
        fp32_outputs: tensors produced by FP32 nodes (red bars).
        fp32_inputs: tensors read by FP32 nodes (orange bars, when not already red).

    Returns:
        SVG markup, ``_W`` x ``_H`` user units, scaling to its container's width.
    """
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    values = [r.get("max_abs") for r in rows]
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    top_val = max(finite + [FP16_MAX, threshold or 0])
    lo = min(math.floor(math.log10(min(finite + [1.0]))), 0)  # the axis always shows 1e0
    hi = math.ceil(math.log10(top_val * 1.5))  # headroom above the 65504 line for its label
    lo = max(lo, hi - 12)  # twelve decades are plenty; tiny values sit on the floor

    def y_of(v: float) -> float:
        lv = min(max(math.log10(v), lo), hi) if v > 0 else lo
        return _TOP + plot_h * (1 - (lv - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="100%" role="img" '
        f'aria-label="max |x| per tensor in graph order, log scale" font-family="sans-serif" font-size="12">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for d in range(lo, hi + 1):  # decade grid and labels
        y = y_of(10.0**d)
        parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">1e{d}</text>')
    n = len(rows)
    step = plot_w / max(n, 1)
    bar_w = max(step * 0.8, 0.6)
    for i, row in enumerate(rows):
        v = row.get("max_abs")
        bad = bool(row.get("nonfinite")) or not isinstance(v, (int, float)) or not math.isfinite(v)
        name = row.get("tensor", "")
        color = COLOR_FP32_OUT if name in fp32_outputs else COLOR_FP32_IN if name in fp32_inputs else COLOR_FP16
        y = _TOP if bad else y_of(v)
        x = _LEFT + i * step + (step - bar_w) / 2
        label = f"#{i} {name} ({row.get('op_type') or 'input'} {row.get('producer') or ''}): max |x| = {'non-finite' if bad else f'{v:.6g}'}"
        parts.append(
            f'<rect x="{x:.2f}" y="{y:.1f}" width="{bar_w:.2f}" height="{max(_TOP + plot_h - y, 0.5):.1f}" fill="{color}"><title>{escape(label)}</title></rect>'
        )
        if bad:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{_TOP + 10}" text-anchor="middle" fill="{COLOR_LIMIT}">▲</text>')
    y = y_of(FP16_MAX)
    parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{COLOR_LIMIT}" stroke-width="2"/>')
    parts.append(f'<text x="{_LEFT + plot_w - 4}" y="{y - 5:.1f}" text-anchor="end" fill="{COLOR_LIMIT}">FP16 max 65504</text>')
    if threshold:
        y = y_of(threshold)
        parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{COLOR_THRESHOLD}" stroke-width="2" stroke-dasharray="8 5"/>')
        parts.append(f'<text x="{_LEFT + plot_w - 4}" y="{y + 15:.1f}" text-anchor="end" fill="{COLOR_THRESHOLD}">threshold {threshold:g}</text>')
    for k in _ticks(n):  # x ticks: a handful of graph-order positions
        x = _LEFT + (k + 0.5) * step
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP + plot_h}" y2="{_TOP + plot_h + 5}" stroke="#555"/>')
        parts.append(f'<text x="{x:.1f}" y="{_TOP + plot_h + 18}" text-anchor="middle" fill="#555">{k}</text>')
    parts.append(f'<text x="{_LEFT + plot_w / 2}" y="{_H - 8}" text-anchor="middle" fill="#333">tensor, in graph order ({n} tensors)</text>')
    parts.append(f'<text transform="translate(16 {_TOP + plot_h / 2}) rotate(-90)" text-anchor="middle" fill="#333">max |x| (log scale)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _ticks(n: int) -> list[int]:
    if n <= 0:
        return []
    raw = max(n / 10, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return list(range(0, n, int(step)))
