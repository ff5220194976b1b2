"""HTML of the report's sections (plain strings, every value escaped)."""
from __future__ import annotations

import datetime as dt
from collections import Counter
from html import escape
from typing import Any

import pyarrow.compute as pc

from pipeline.readers.inspect import images
from pipeline.readers.inspect.assets import CSS, JS
from pipeline.readers.inspect.gallery import Card
from pipeline.readers.inspect.load import RunData

SECTIONS = (("run", "Run"), ("stages", "Stages"), ("errors", "Errors"), ("plots", "Plots"),
            ("consistency", "Consistency"), ("gallery", "Gallery"))


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def badge(text: str, kind: str = "") -> str:
    return f'<span class="badge b-{e(kind or text)}">{e(text)}</span>'


def document(data: RunData, body: str) -> str:
    nav = "".join(f'<a href="#{sid}">{label}</a>' for sid, label in SECTIONS)
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>faceweave report · '
            f'{e(data.out.name)}</title><meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<style>{CSS}</style></head><body data-broken-images="pending"><header class="top">'
            f'<div><h1>faceweave report</h1><div class="sub">{e(data.out.resolve())} · generated {when}</div></div>'
            f'<nav>{nav}</nav></header>{body}<script>{JS}</script></body></html>')


def banner(random_stages: dict[str, str]) -> str:
    if not random_stages:
        return ""
    names = ", ".join(f"<code>{e(n)}</code> ({e(m)})" for n, m in random_stages.items())
    return (f'<div class="banner" id="random-weights"><b>⚠ RANDOM WEIGHTS:</b> {names} ran with randomly '
            f"initialised weights. Their columns, and every annotation computed on a frame they produced, "
            f"are <b>not real annotations</b>: use this output for smoke tests only.</div>")


def input_of(cfg: dict) -> str:
    """The input folder of the run; for ``sample`` (no --input) the bundled photos' folder."""
    if cfg.get("input"):
        return str(cfg["input"])
    if cfg.get("source") == "sample":
        from pipeline.sources.sample import SAMPLE_DIR

        return f"{SAMPLE_DIR} (the bundled sample photos)"
    return "–"


def run_section(data: RunData, cards: list[Card]) -> str:
    summary, cfg = data.run.get("summary", {}), data.config
    src = data.stages.get("source")
    n = src.table.num_rows if src else summary.get("samples", 0)
    errors = sum(s.counts().get("error", 0) for s in data.stages.values())
    packed = data.shard_index.get("samples", summary.get("packed", "–"))
    facts = [("samples", n), ("packed", packed), ("error rows", errors),
             ("identities", len(set(data.identity_of.values()))), ("shards", len(data.shard_index.get("shards", {}))),
             ("last run seconds", summary.get("seconds", "–")), ("preset", cfg.get("preset") or "–"),
             ("source", cfg.get("source") or "–")]
    grid = "".join(f'<div class="fact"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>' for k, v in facts)
    started = data.run.get("started")
    when = dt.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S") if started else "–"
    versions = ", ".join(f"{e(k)} {e(v)}" for k, v in sorted(data.run.get("versions", {}).items()))
    return (f'<section id="run"><h2>Run</h2><div class="facts">{grid}</div>'
            f'<p class="muted">input <code>{e(input_of(cfg))}</code> · started {e(when)} · '
            f'stages {e(", ".join(data.stage_names[1:]))}<br>{versions}</p>'
            f"<details><summary>config.yaml (resolved)</summary><pre>{e(data.config_text or '(missing)')}</pre>"
            f"</details></section>")


def stages_section(data: RunData) -> str:
    prov = data.run.get("provenance", {})
    rows = []
    for name in data.stage_names:
        st = data.stages[name]
        counts = st.counts()
        combos = st.provenance() if name != "source" else []
        random = any(c.get("weights_random") for c in combos)
        models = "<br>".join(
            f"{e(c.get('model') or '–')}{' ' + badge('RANDOM', 'random') if c.get('weights_random') else ''}"
            for c in combos) or "–"
        shas = "<br>".join(f'<code title="{e(c.get("weights_sha256"))}">'
                           f'{e((c.get("weights_sha256") or "–")[:16])}</code>' for c in combos) or "–"
        weights_file = prov.get(name, {}).get("weights") or ""
        speed = f"{st.img_per_s:.1f}" if st.img_per_s else "–"
        rows.append(f'<tr class="{"random" if random else ""}"><td><b>{e(name)}</b></td><td>{models}</td>'
                    f'<td>{e(weights_file) or "–"}</td><td>{shas}</td>'
                    + "".join(f'<td class="n">{counts.get(s, 0)}</td>' for s in ("ok", "skipped", "error"))
                    + f'<td class="n">{speed}</td><td class="n">{st.seconds:.1f}</td></tr>')
    return ('<section id="stages"><h2>Stages and provenance</h2><table><tr><th>stage</th><th>model</th>'
            '<th>weights file</th><th>weights sha256</th><th>ok</th><th>skipped</th><th>error</th>'
            f'<th>img/s</th><th>seconds</th></tr>{"".join(rows)}</table>'
            '<p class="muted">img/s: samples per second of stage compute, summed over shards (OUT/stats).'
            "</p></section>")


def errors_section(data: RunData, examples: int = 4) -> str:
    causes, follow = [], []
    for name in data.stage_names:
        table = data.stages[name].table
        bad = table.filter(pc.not_equal(table["status"], "ok")).select(["key", "status", "error"]).to_pylist()
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in bad:
            groups.setdefault((r["status"], (r["error"] or "").split(":", 1)[0]), []).append(r)
        for (status, reason), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            keys = ", ".join(f"<code>{e(r['key'])}</code>" for r in items[:examples])
            detail = next((r["error"] for r in items if ":" in (r["error"] or "")), "")
            row = (f"<tr><td>{e(name)}</td><td>{badge(status)}</td><td><b>{e(reason or '(none)')}</b>"
                   f'<div class="muted mono">{e(detail[:160])}</div></td><td class="n">{len(items)}</td>'
                   f"<td>{keys}{' …' if len(items) > examples else ''}</td></tr>")
            (follow if reason == "upstream_failed" else causes).append(row)
    if not causes and not follow:
        return '<section id="errors"><h2>Errors</h2><p>No failed or skipped rows.</p></section>'
    head = ("<table><tr><th>stage</th><th>status</th><th>reason</th><th>count</th><th>example keys</th></tr>")
    rest = (f"<details><summary>{len(follow)} stage(s) with upstream_failed rows (consequences of the causes "
            f"above)</summary>{head}{''.join(follow)}</table></details>") if follow else ""
    return (f'<section id="errors"><h2>Errors and skips by stage and reason</h2>{head}'
            f'{"".join(causes) or "<tr><td colspan=5>none</td></tr>"}</table>{rest}</section>')


def charts_section(sid: str, title: str, charts: list[str], extra: str = "") -> str:
    return f'<section id="{sid}"><h2>{e(title)}</h2><div class="charts">{"".join(charts)}</div>{extra}</section>'


def worst_table(title: str, rows: list[dict[str, Any]], cards: dict[str, Card], limit: float | None = None,
                higher_is_worse: bool = True) -> str:
    body = []
    for i, r in enumerate(rows, 1):
        card = cards.get(r["key"])
        thumb = f'<img src="{e(card.layers[0][1])}" alt="">' if card and card.layers else ""
        link = f'<a href="#c-{e(r["key"])}">{e(r["key"])}</a>' if card else e(r["key"])
        fails = limit is not None and (r["value"] > limit if higher_is_worse else r["value"] < limit)
        body.append(f'<tr><td class="n">{i}</td><td>{thumb}</td><td><code>{link}</code><div class="muted">'
                    f'{e(r["identity"])}</div></td><td class="n {"over" if fails else ""}"><b>{r["value"]:.3f}</b></td>'
                    f'<td>{badge(r["quality"]) if r.get("quality") else ""}</td></tr>')
    table = "".join(body) or '<tr><td colspan="5" class="muted">no values</td></tr>'
    return f'<div><h3>{e(title)}</h3><table>{table}</table></div>'


def _legend(title: str, names: list[str]) -> str:
    items = "".join(f'<span class="sw" style="background:{c}"></span>{e(n)}' for n, c in images.legend(names))
    return f'<div class="legend"><b>{e(title)}</b>{items}</div>'


def gallery_section(cards: list[Card], total_packed: int) -> str:
    ok = [c for c in cards if c.status == "ok"]
    fails = [c for c in cards if c.status != "ok"]
    idents = Counter(c.identity for c in cards)
    flags = Counter(f for c in cards for f in c.flags)
    opt = "".join(f'<option value="{e(i)}">{e(i)} ({n})</option>' for i, n in sorted(idents.items()))
    fopt = "".join(f'<option value="{e(f)}">{e(f)} ({n})</option>' for f, n in sorted(flags.items()))
    sopt = "".join(f'<option value="{s}">{s} ({n})</option>'
                   for s, n in sorted(Counter(c.status for c in cards).items()))
    controls = (f'<div class="controls"><label>identity <select id="f-identity"><option value="">all</option>{opt}'
                f'</select></label><label>status <select id="f-status"><option value="">all</option>{sopt}</select>'
                f'</label><label>flag <select id="f-flag"><option value="">all</option><option value="__any">any '
                f'problem</option><option value="__none">no problem</option>{fopt}</select></label>'
                f'<label>key <input id="f-key" type="search" placeholder="substring"></label>'
                f'<span id="f-count" class="muted"></span></div>')
    layers = {label for c in ok for label, _ in c.layers}
    legends = ""
    if "mask" in layers:
        legends += _legend("mask (landmark pseudo mask)", images.MASK_NAMES)
    if "parsing" in layers:
        legends += _legend("parsing (face parsing)", images.PARSING_NAMES)
    legends = f'<div class="legends">{legends}</div>' if legends else ""
    note = (f'<p class="muted">{len(ok)} of {total_packed} packed samples, spread across identities; hover a '
            f"thumbnail to enlarge. Failed samples (no shard entry) follow.</p>")
    return (f'<section id="gallery"><h2>Gallery</h2>{note}{controls}{legends}<div class="cards">'
            f'{"".join(card_html(c) for c in ok)}</div><h3>Failed or skipped samples</h3><div class="fails">'
            f'{"".join(fail_html(c) for c in fails) or "<p class=muted>none</p>"}</div></section>')


def _attrs(c: Card) -> str:
    return (f'data-card data-key="{e(c.key)}" data-identity="{e(c.identity)}" data-status="{e(c.status)}" '
            f'data-flags="{e(" ".join(c.flags))}"')


def card_html(c: Card) -> str:
    strip = "".join(f'<figure><img src="{e(path)}" alt="{e(label)}" width="136" height="136">'
                    f"<figcaption>{e(label)}</figcaption></figure>" for label, path in c.layers)
    badges = badge(c.quality) if c.quality else ""
    badges += "".join(badge(r, "flag") for r in c.reasons if r != "random_weights")
    if c.random_stages:
        badges += badge("random weights: " + ", ".join(c.random_stages), "random")
    facts = " · ".join(f'<span class="kv">{e(k)} <b>{e(v)}</b></span>' for k, v in c.facts)
    caps = "".join(f'<div class="caption">“{e(t)}” <span class="s">CLIP {s:.3f}</span></div>' if s is not None
                   else f'<div class="caption">“{e(t)}”</div>' for t, s in c.captions)
    return (f'<div class="card q-{e(c.quality or "none")}" id="c-{e(c.key)}" {_attrs(c)}><div class="strip">{strip}'
            f'</div><div class="info"><div class="key">{e(c.key)}</div><div class="muted">identity '
            f'{e(c.identity)}</div><div>{badges}</div><div>{facts}</div>{caps}</div></div>')


def fail_html(c: Card) -> str:
    return (f'<div class="fail" {_attrs(c)}><div><b>{e(c.key)}</b> {badge(c.status)}</div><div class="muted">'
            f'identity {e(c.identity)} · stage <b>{e(c.stage)}</b></div>'
            f'<div class="why mono">{e(c.error)}</div></div>')
