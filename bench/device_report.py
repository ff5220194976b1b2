"""Markdown and the compact summary table of bench/device_check.py's report.json."""
from __future__ import annotations

E2E_TARGET = 150.0
"""img/s end to end, every default stage, one H100/H200, CASIA-sized inputs (issue #19)."""
NAIVE_TARGET = 30.0
"""Speed-up over the naive per-image composition."""


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _met(value, target: float | None, higher: bool = True) -> str:
    if target is None:
        return "—"
    if not isinstance(value, (int, float)):
        return "no figure"
    return "yes" if (value >= target if higher else value <= target) else "NO"


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, met?) rows; a part without figures shows its status instead."""
    parts = report.get("parts", {})
    fig = lambda p: parts.get(p, {}).get("figures") or {}  # noqa: E731
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, part: str, value, target: float | None = None, target_text: str | None = None,
            higher: bool = True) -> None:
        if part not in parts:
            return
        status = parts[part].get("status", "not run")
        shown = _fmt(value) if value is not None or status == "ok" else status
        rows.append((label, shown, target_text or (_fmt(target) if target is not None else "—"),
                     _met(value, target, higher)))

    t = fig("gpu_tests")
    add("gpu tests passed / run", "gpu_tests",
        f"{t['passed']}/{t['total'] - t['skipped']}" if t else None, None, "all")
    if t:
        rows[-1] = (*rows[-1][:3], "yes" if t["failed"] + t["errors"] == 0 else "NO")
        add("test modules that did not import (missing packages)", "gpu_tests", t.get("modules_not_importable"))
    for size in (250, 1024):
        e = fig(f"e2e_{size}")
        target = E2E_TARGET if size == 250 else None
        add(f"e2e {size}px img/s (wall, n={e.get('n', '?')})", f"e2e_{size}", e.get("img_s"), target)
        add(f"e2e {size}px img/s without start-up", f"e2e_{size}", e.get("steady_img_s"), target)
        add(f"e2e {size}px GPU busy %", f"e2e_{size}", e.get("gpu_busy_pct"))
        add(f"e2e {size}px peak GPU MiB (card)", f"e2e_{size}", e.get("peak_gpu_mib_card"))
        add(f"e2e {size}px samples packed (ok in every stage)", f"e2e_{size}", e.get("packed"))
    nv = fig("naive")
    add("naive per-image img/s", "naive", nv.get("img_s"))
    add("speed-up over naive", "naive", nv.get("speedup"), NAIVE_TARGET)
    s = fig("stages")
    add(f"default GPU stages combined img/s @ {(s.get('batches') or ['?'])[-1]}", "stages",
        s.get("combined_img_s"), E2E_TARGET)
    for part, label, key in (("dense_face", "Dense-Face s/step", "s_step"),
                             ("portraitbooth", "PortraitBooth s/step (t <= R_t)", "s_step_id")):
        batches = fig(part).get("batches") or {}
        if not batches:
            add(label, part, None)
        for b, row in batches.items():
            add(f"{label} @ batch {b}", part, row.get(key))
            peak = row.get("peak_gib") or row.get("peak_gib_id")
            if peak is not None:
                add(f"{label.split()[0]} peak GiB @ batch {b}", part, peak)
    return rows


def _table(head: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows])


def render(report: dict) -> str:
    """The docs/benchmarks.md section: what ran where, the summary table, one paragraph per part."""
    v = report.get("versions", {})
    lines = [f"Mode {report['mode']}, started {report['started']} on {report['machine']}; "
             + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
             "Random weights (real architectures) wherever a real file is absent: the FLOPs are real, "
             "the annotations are not.", "",
             _table(["figure", "value", "target", "met?"], [list(r) for r in summary_rows(report)]), ""]
    for name, part in report.get("parts", {}).items():
        lines.append(f"**{name}**: {part['status']}, {part['seconds']} s of {part['budget_s']:.0f} s.")
        figures = part.get("figures") or {}
        if name == "stages" and figures.get("rows"):
            batches = figures["batches"]
            lines += ["", _table(["stage", "weights", *[f"img/s @ {b}" for b in batches], "peak GiB"],
                                 [[k, r.get("weights", r.get("error")), *[r.get("img_s", {}).get(str(b))
                                   for b in batches], r.get("peak_gib")] for k, r in figures["rows"].items()])]
        elif figures.get("batches") and isinstance(figures["batches"], dict):  # the trainers
            keys = sorted({k for row in figures["batches"].values() for k in row})
            lines += [f" {figures.get('res')}x{figures.get('res')}, gradient checkpointing "
                      f"{part.get('gradient_checkpointing')}.", "",
                      _table(["batch", *keys], [[b, *[row.get(k) for k in keys]]
                                                for b, row in figures["batches"].items()])]
        elif figures:
            flat = {k: val for k, val in figures.items() if not isinstance(val, (dict, list))}
            lines.append(" " + ", ".join(f"{k} {_fmt(val)}" for k, val in flat.items()) + ".")
            for k, val in figures.items():
                if isinstance(val, dict):
                    lines.append(f" {k}: " + ", ".join(f"{a} {_fmt(b) if not isinstance(b, dict) else b}"
                                                       for a, b in val.items()) + ".")
        for key in ("steady_how", "speedup_of"):
            if part.get(key):
                lines.append(f" {key.replace('_', ' ')}: {part[key]}.")
        for key in ("weights_random", "left_out", "failing", "not_importable", "stages"):
            if part.get(key):
                lines.append(f" {key}: {', '.join(map(str, part[key]))}.")
        if part.get("partial"):
            lines.append(" partial: figures of the shards finished before the part was cut.")
        if part.get("caption_left_out"):
            lines.append(" caption left out (the prep part made no caption models).")
        lines.append("")
    return "\n".join(lines).rstrip()
