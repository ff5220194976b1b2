"""``pipeline inspect OUT``: one static HTML page (OUT/report/index.html) and a terminal summary.

Reads the output folder only; writes nothing outside OUT/report/.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import yaml

from pipeline import layout
from pipeline.readers.inspect import gallery, page, plots
from pipeline.readers.inspect.load import RunData, load
from schemas import consistency as checks

ANGLE_SOURCES = (("pose", "head-pose net"), ("landmarks", "landmarks PnP"), ("expression", "3DDFA-V2"))
VERDICT_COLOURS = {"good": "#1f9d6b", "suspect": "#d98a00", "bad": "#d63b3b"}
CHECK_TITLES = {
    "posenet_vs_pnp_deg": "pose net vs PnP (deg)", "tddfa_vs_pnp_deg": "3DDFA-V2 vs PnP (deg)",
    "tddfa_vs_posenet_deg": "3DDFA-V2 vs pose net (deg)", "facemask_vs_hull_iou": "face mask vs landmark hull IoU",
    "landmarks_in_box": "landmarks inside detect box", "restore_cosine": "identity cosine after restore",
}
WORST_N = 8


@dataclass
class Report:
    """What ``build_report`` wrote, for the CLI and tests."""

    path: Path
    data: RunData
    cards: list[gallery.Card]


def _thresholds(data: RunData) -> dict[str, float]:
    try:
        cfg = (yaml.safe_load(data.config_text) or {}).get("consistency") or {}
    except yaml.YAMLError:
        cfg = {}
    out = {}
    for column, key in (("facemask_vs_hull_iou", "min_mask_iou"), ("landmarks_in_box", "min_landmarks_in_box"),
                        ("restore_cosine", "min_restore_cosine")):
        if key in cfg:
            out[column] = float(cfg[key])
    if "max_pose_diff_deg" in cfg:
        out.update({c: float(cfg["max_pose_diff_deg"]) for c in checks.POSE_CHECKS})
    return out


def _ok_rows(data: RunData, stage: str, columns: list[str]) -> list[dict[str, Any]]:
    table = data.stages[stage].table
    have = [c for c in columns if c in table.column_names]
    return table.filter(pc.equal(table["status"], "ok")).select(have).to_pylist()


def _general_charts(data: RunData) -> list[str]:
    st = data.stages
    charts = []
    for angle in ("yaw", "pitch", "roll"):
        series = {label: st[name].values(angle) for name, label in ANGLE_SOURCES if name in st}
        if series:
            charts.append(plots.histogram(series, f"{angle} by estimator", "degrees", lo=-90, hi=90, bins=36))
    if "detect" in st:
        charts.append(plots.histogram({"face": st["detect"].values("face_size")},
                                      "face size (detect box, shorter side)", "source pixels"))
        charts.append(plots.histogram({"score": st["detect"].values("score")}, "detection score", "confidence"))
    if "identity" in st and len(drift := st["identity"].values("restore_cosine")):
        charts.append(plots.histogram({"cos": drift}, "identity drift after restore", "cosine before/after",
                                      threshold=_thresholds(data).get("restore_cosine")))
    if "caption" in st:
        rows = _ok_rows(data, "caption", ["caption_scores", "captions"])
        top = np.array([r["caption_scores"][0] for r in rows if r.get("caption_scores")], np.float64)
        words = np.array([len(t.split()) for r in rows for t in (r.get("captions") or [])], np.float64)
        charts.append(plots.histogram({"top": top}, "caption CLIP score (best kept caption)", "cosine"))
        charts.append(plots.histogram({"words": words}, "caption length", "words per kept caption"))
    ids_all = Counter(data.identity_of.values())
    failed = gallery.outcomes(data)
    ids_packed = Counter(i for k, i in data.identity_of.items() if k not in failed)
    if len(ids_all) <= 12:
        charts.append(plots.bars([(i, ids_packed.get(i, 0)) for i in ids_all], "packed images per identity"))
    else:
        charts.append(plots.histogram({"input": np.array(list(ids_all.values())),
                                       "packed": np.array([ids_packed.get(i, 0) for i in ids_all])},
                                      "images per identity", "images"))
    return charts


def _consistency_html(data: RunData, cards: list[gallery.Card]) -> str:
    if "consistency" not in data.stages:
        return ('<section id="consistency"><h2>Consistency</h2><p class="muted">The consistency stage did not run: '
                "add <code>consistency</code> to --stages for cross-annotation checks.</p></section>")
    st, limits = data.stages["consistency"], _thresholds(data)
    rows = _ok_rows(data, "consistency", ["key", "quality", "quality_reasons", *checks.CHECKS])
    verdicts = Counter(r.get("quality") or "unchecked" for r in rows)
    reasons = Counter(x for r in rows for x in (r.get("quality_reasons") or []))
    charts = [plots.bars(sorted(verdicts.items()), "verdict", VERDICT_COLOURS),
              plots.bars(sorted(reasons.items()), "reasons")]
    by_key = {c.key: c for c in cards}
    worst = []
    for column, (_, higher_is_worse) in checks.CHECKS.items():
        values = st.values(column)
        if not len(values):
            continue
        charts.append(plots.histogram({column: values}, CHECK_TITLES[column], threshold=limits.get(column)))
        have = [r for r in rows if r.get(column) is not None and np.isfinite(r[column])]
        have.sort(key=lambda r: -r[column] if higher_is_worse else r[column])
        listed = [{"key": r["key"], "identity": data.identity_of.get(r["key"], ""), "value": float(r[column]),
                   "quality": r.get("quality")} for r in have[:WORST_N]]
        direction = "highest" if higher_is_worse else "lowest"
        worst.append(page.worst_table(f"worst {CHECK_TITLES[column]} ({direction} first)", listed, by_key,
                                      limits.get(column), higher_is_worse))
    extra = f'<h3>Worst samples per check</h3><div class="worst">{"".join(worst)}</div>'
    return page.charts_section("consistency", "Consistency checks", charts, extra)


def build_report(out: Path, max_samples: int = 200) -> Report:
    """Write OUT/report/index.html (+ img/) from an output folder; returns what was written."""
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    out = Path(out)
    data = load(out)
    report_dir = layout.report(out)
    shutil.rmtree(report_dir / "img", ignore_errors=True)  # stale thumbnails of an earlier report
    cards = gallery.build(data, report_dir, max_samples)
    packed = data.shard_index.get("samples", len([c for c in cards if c.status == "ok"]))
    body = (page.banner(data.random_stages()) + '<main>' + page.run_section(data, cards)
            + page.stages_section(data) + page.errors_section(data)
            + page.charts_section("plots", "Distributions", _general_charts(data))
            + _consistency_html(data, cards) + page.gallery_section(cards, packed) + "</main>")
    path = report_dir / "index.html"
    tmp = report_dir / f".index.html.tmp-{os.getpid()}"
    tmp.write_text(page.document(data, body), encoding="utf-8")
    os.replace(tmp, path)
    return Report(path=path, data=data, cards=cards)


def print_summary(report: Report, console: Any = None) -> None:
    """A short terminal summary (rich): per-stage counts, random weights, verdicts, the page."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True)
    data = report.data
    random = data.random_stages()
    table = Table(title=f"faceweave · {data.out}", title_justify="left")
    for col in ("stage", "ok", "skipped", "error", "model", "img/s"):
        table.add_column(col, justify="right" if col in ("ok", "skipped", "error", "img/s") else "left")
    for name in data.stage_names:
        st = data.stages[name]
        counts = st.counts()
        models = ", ".join(sorted({str(p.get("model") or "") for p in st.provenance()} - {""})) or "–"
        if name in random:
            models = f"[bold red]{models} (RANDOM WEIGHTS)[/]"
        table.add_row(name, str(counts.get("ok", 0)), str(counts.get("skipped", 0)), str(counts.get("error", 0)),
                      models, f"{st.img_per_s:.1f}" if st.img_per_s else "–")
    console.print(table)
    if random:
        console.print(f"[bold red]WARNING: random weights in {', '.join(random)}: not real annotations[/]")
    if "consistency" in data.stages:
        verdicts = Counter(r.get("quality") or "unchecked" for r in _ok_rows(data, "consistency", ["quality"]))
        console.print("consistency: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
    n_ok = sum(1 for c in report.cards if c.status == "ok")
    console.print(f"report: {report.path} ({n_ok} samples, {len(report.cards) - n_ok} failed shown)")
