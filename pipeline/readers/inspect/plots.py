"""Inline SVG charts (no plotting library): histograms with several series, and bar lists."""
from __future__ import annotations

import math
from html import escape

import numpy as np

COLOURS = ("#3f6ee8", "#f07b3f", "#1fa57a", "#a64bd6", "#d6336c")
W, H = 380, 210
LEFT, RIGHT, TOP, BOTTOM = 42, 12, 34, 38


def _num(v: float, step: float | None = None) -> str:
    """Compact number; with ``step`` (tick spacing) just enough decimals to tell ticks apart."""
    if step is not None and step > 0:
        decimals = int(min(4, max(0, -math.floor(math.log10(step)) + 1)))
        return f"{v:.{decimals}f}"
    a = abs(v)
    if a >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.4g}"


def _frame(title: str, body: str, height: int = H) -> str:
    return (f'<svg class="chart" viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img" '
            f'aria-label="{escape(title)}"><text x="10" y="17" class="ct">{escape(title)}</text>{body}</svg>')


def empty(title: str, why: str = "no data") -> str:
    return _frame(title, f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="cm">{escape(why)}</text>')


def histogram(series: dict[str, np.ndarray], title: str, unit: str = "", bins: int = 24,
              lo: float | None = None, hi: float | None = None, threshold: float | None = None) -> str:
    """Overlaid histograms of the series (values outside [lo, hi] land in the end bins); a dashed
    line marks ``threshold`` (the range grows to show it)."""
    series = {k: np.asarray(v, np.float64) for k, v in series.items() if len(v)}
    if not series:
        return empty(title)
    everything = np.concatenate(list(series.values()))
    lo = float(everything.min()) if lo is None else lo
    hi = float(everything.max()) if hi is None else hi
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(np.clip(v, lo, hi), edges)[0] for k, v in series.items()}
    peak = max(int(c.max()) for c in counts.values()) or 1
    legend, top = [], 26
    for i, (name, v) in enumerate(series.items()):
        y = 31 + i * 13
        label = (f"n={len(v)} · median {_num(float(np.median(v)))} · range {_num(float(v.min()))} "
                 f"to {_num(float(v.max()))}")
        label = f"{name}: {label}" if len(series) > 1 else label
        legend.append(f'<rect x="10" y="{y - 8}" width="9" height="9" fill="{COLOURS[i % len(COLOURS)]}"/>'
                      f'<text x="23" y="{y}" class="cl">{escape(label)}</text>')
        top = y + 12
    height = top + (H - TOP - BOTTOM) + BOTTOM
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    bw = pw / bins
    opacity = 0.85 if len(series) == 1 else 0.5
    parts = legend
    for (name, c), colour in zip(counts.items(), COLOURS):
        for i, n in enumerate(c):
            if n:
                h = ph * n / peak
                parts.append(f'<rect x="{LEFT + i * bw + 0.5:.1f}" y="{top + ph - h:.1f}" width="{max(bw - 1, 1):.1f}" '
                             f'height="{h:.1f}" fill="{colour}" fill-opacity="{opacity}">'
                             f"<title>{escape(name)}: {n} in [{_num(edges[i])}, {_num(edges[i + 1])})</title></rect>")
    parts.append(_axes(lo, hi, peak, unit, top, height))
    if threshold is not None:
        x = LEFT + pw * (threshold - lo) / (hi - lo)
        anchor = "end" if x > LEFT + pw * 0.6 else "start"
        tx = x - 3 if anchor == "end" else x + 3
        parts.append(f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{top + ph}" class="thr"/>'
                     f'<text x="{tx:.1f}" y="{top + 8}" text-anchor="{anchor}" class="cm thr-t">'
                     f"threshold {_num(threshold)}</text>")
    return _frame(title, "".join(parts), height)


def _axes(lo: float, hi: float, peak: int, unit: str, top: float, height: float) -> str:
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    y0 = top + ph
    out = [f'<line x1="{LEFT}" y1="{y0}" x2="{LEFT + pw}" y2="{y0}" class="ax"/>',
           f'<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{y0}" class="ax"/>',
           f'<text x="{LEFT - 4}" y="{top + 4}" text-anchor="end" class="cm">{peak}</text>',
           f'<text x="{LEFT - 4}" y="{y0}" text-anchor="end" class="cm">0</text>']
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = LEFT + pw * frac
        anchor = "end" if frac == 1.0 else "middle"  # the last label would overflow the right edge
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" class="ax"/>'
                   f'<text x="{x + (3 if frac == 1.0 else 0):.1f}" y="{y0 + 15}" text-anchor="{anchor}" class="cm">'
                   f"{_num(lo + (hi - lo) * frac, (hi - lo) / 4)}</text>")
    if unit:
        out.append(f'<text x="{LEFT + pw / 2}" y="{height - 6}" text-anchor="middle" class="cm">{escape(unit)}</text>')
    return "".join(out)


def bars(items: list[tuple[str, int]], title: str, colours: dict[str, str] | None = None) -> str:
    """Horizontal bars, one per (label, count), at most 12 shown (the largest)."""
    if not items:
        return empty(title)
    shown = sorted(items, key=lambda kv: -kv[1])[:12]
    top = max(c for _, c in shown) or 1
    row = min(22.0, (H - TOP - 12) / len(shown))
    label_w = 110
    pw = W - LEFT - RIGHT - label_w + 20
    parts = []
    for i, (label, count) in enumerate(shown):
        y = TOP + i * row
        w = max(pw * count / top, 1)
        colour = (colours or {}).get(label, COLOURS[0])
        parts.append(f'<text x="{label_w + 6}" y="{y + row * 0.68:.1f}" text-anchor="end" class="cl">'
                     f"{escape(label[:18])}</text>"
                     f'<rect x="{label_w + 12}" y="{y + 2:.1f}" width="{w:.1f}" height="{row - 5:.1f}" fill="{colour}" '
                     f'fill-opacity="0.85"><title>{escape(label)}: {count}</title></rect>'
                     f'<text x="{label_w + 16 + w:.1f}" y="{y + row * 0.68:.1f}" class="cm">{count}</text>')
    if len(items) > len(shown):
        parts.append(f'<text x="{W - RIGHT}" y="{H - 6}" text-anchor="end" class="cm">'
                     f"{len(items) - len(shown)} more not shown</text>")
    return _frame(title, "".join(parts))
