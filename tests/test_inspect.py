"""``pipeline inspect``: the static report of an output folder, checked as HTML and in headless Chromium."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from pipeline.readers.inspect import build_report, print_summary
from pipeline.readers.inspect import gallery, plots
from tests.conftest import make_casia_tree
from tests.test_consistency import build_lite_out

SECTION_IDS = ("run", "stages", "errors", "plots", "consistency", "gallery")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless_shell")


@pytest.fixture(scope="session")
def lite_out(tmp_path_factory) -> Path:
    return build_lite_out(tmp_path_factory.getbasetemp() / "lite_out")


@pytest.fixture(scope="session")
def restore_out(tmp_path_factory) -> Path:
    """Detect + random-weight tiny CodeFormer + identity + consistency on 2 photos."""
    root = tmp_path_factory.mktemp("restore_out")
    tree = make_casia_tree(root / "tree", 2, 1)
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--source", "casia-webface", "--input", str(tree),
           "--out", str(root / "out"), "--preset", "lite", "--executor", "local", "--shard-size", "4",
           "--stages", "detect,restore,identity,consistency", "--set", "restore.weights=random",
           "--set", "restore.arch=tiny", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "out"


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM", ""), *CHROMIUM_NAMES):
        if name and (path := shutil.which(name)):
            return path
    return None


def _render(page: Path, tmp: Path) -> tuple[str, Path]:
    """The DOM after load (our script has counted broken images) and a screenshot of the page."""
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary found (CI installs it: apt-get install -y chromium)")
    common = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=10000"]
    url = page.resolve().as_uri()
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    shot = tmp / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,3000", url], capture_output=True, timeout=120)
    return dom, shot


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*")
            if p.is_file() and p.relative_to(out).parts[0] != "report"}


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


@pytest.mark.slow
def test_report_of_a_lite_run(lite_out):
    before = _snapshot(lite_out)
    report = build_report(lite_out)
    assert _snapshot(lite_out) == before  # nothing outside OUT/report/ was touched
    html = report.path.read_text()
    assert report.path == lite_out / "report" / "index.html"
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in html
    assert 'id="random-weights"' in html and "parsing" in html  # the loud banner
    ok = [c for c in report.cards if c.status == "ok"]
    assert len(ok) == 9 and len({c.identity for c in ok}) == 3
    for card in ok:
        assert [label for label, _ in card.layers] == ["frame", "landmarks", "pose", "depth", "mask", "parsing"]
        assert card.quality in ("good", "suspect", "bad") and "mask_mismatch" in card.flags
        assert card.random_stages == ["parsing"]
    fails = [c for c in report.cards if c.status != "ok"]
    assert {c.stage for c in fails} == {"source", "detect"} and all(c.error for c in fails)
    srcs = _images(html)
    assert srcs and all(s.startswith("img/") and (report.path.parent / s).is_file() for s in srcs)
    assert "http://" not in html and "https://" not in html  # opens offline, no CDN
    for title in ("yaw by estimator", "face size", "detection score", "packed images per identity",
                  "face mask vs landmark hull IoU", "worst pose net vs PnP"):
        assert title in html
    assert "decompression_bomb" in html and "0009999_bomb" in html  # reasons with example keys


@pytest.mark.slow
def test_gallery_cap_spreads_over_identities(lite_out):
    report = build_report(lite_out, max_samples=3)
    ok = [c for c in report.cards if c.status == "ok"]
    assert len(ok) == 3 and len({c.identity for c in ok}) == 3
    again = build_report(lite_out, max_samples=3)
    assert [c.key for c in again.cards] == [c.key for c in report.cards]  # deterministic
    on_disk = sorted(p.name for p in (lite_out / "report" / "img").iterdir())
    assert on_disk == sorted(Path(path).name for c in ok for _, path in c.layers)  # no stale thumbnails


@pytest.mark.slow
def test_report_renders_in_chromium(lite_out, tmp_path):
    report = build_report(lite_out)
    dom, shot = _render(report.path, tmp_path)
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    broken = re.search(r'data-broken-images="(\d+)"', body.group(0))
    total = re.search(r'data-images="(\d+)"', body.group(0))
    assert broken and total, body.group(0)
    assert int(total.group(1)) == len(_images(report.path.read_text())) > 0
    assert broken.group(1) == "0"
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom
    count = re.search(r'id="f-count"[^>]*>(\d+) of (\d+) shown', dom)  # the filter script ran
    assert count and count.group(1) == count.group(2) == str(len(report.cards))
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.slow
def test_report_of_a_restore_run(restore_out, tmp_path):
    report = build_report(restore_out)
    html = report.path.read_text()
    ok = [c for c in report.cards if c.status == "ok"]
    assert len(ok) == 2
    for card in ok:
        assert [label for label, _ in card.layers] == ["raw", "restored"]
        assert any(k == "id cos" for k, _ in card.facts)
    assert "identity drift after restore" in html and "codeformer" in html
    assert 'id="random-weights"' in html
    if _chromium():
        dom, _ = _render(report.path, tmp_path)
        assert 'data-broken-images="0"' in dom


@pytest.mark.slow
def test_terminal_summary(lite_out):
    console = Console(record=True, width=140)
    print_summary(build_report(lite_out, max_samples=4), console)
    text = console.export_text()
    assert "RANDOM WEIGHTS" in text and "consistency" in text and "index.html" in text


def test_histogram_svg():
    svg = plots.histogram({"a": np.array([1.0, 2.0, 2.5]), "b": np.array([3.0])}, "t", "deg", threshold=5.0)
    assert svg.startswith("<svg") and "threshold 5" in svg and "a: n=3" in svg and "b: n=1" in svg
    assert "no data" in plots.histogram({"a": np.zeros(0)}, "t")
    assert plots.bars([("x", 3), ("y", 0)], "t").count("<rect") == 2


def test_spread_round_robin():
    picked = gallery._spread({"a": ["a2", "a1", "a3"], "b": ["b1"], "c": ["c1", "c2"]}, 4)
    assert sorted(picked[:3]) == ["a1", "b1", "c1"] and len(picked) == 4
    assert gallery._spread({"a": ["a1"]}, 10) == ["a1"]


def test_card_shows_captions_and_flags(tmp_path):
    import json

    import cv2

    frame = np.full((64, 64, 3), 120, np.uint8)
    meta = {"identity": "p", "caption": {"captions": ["a man in a suit", "a person"], "caption_scores": [0.31, 0.27],
                                         "weights_random": False},
            "consistency": {"quality": "suspect", "quality_reasons": ["pose_disagreement"]},
            "pose": {"yaw": 1.0, "pitch": 2.0, "roll": 3.0, "weights_random": True}}
    files = {"jpg": cv2.imencode(".jpg", frame)[1].tobytes(), "json": json.dumps(meta).encode()}
    (tmp_path / "img").mkdir()
    card = gallery._card("k_1", "p", files, tmp_path / "img")
    assert card.captions == [("a man in a suit", 0.31), ("a person", 0.27)]
    assert card.flags == ["quality:suspect", "pose_disagreement", "random_weights"]
    assert [label for label, _ in card.layers] == ["frame"] and (tmp_path / card.layers[0][1]).is_file()
    from pipeline.readers.inspect import page

    html = page.card_html(card)
    assert "CLIP 0.310" in html and "a man in a suit" in html and "random weights: pose" in html


def test_caption_charts_from_the_manifest(tmp_path):
    import pyarrow as pa

    from pipeline.readers.inspect.load import RunData, StageData
    from pipeline.readers.inspect.report import _general_charts

    table = pa.table({"key": ["a", "b"], "status": ["ok", "error"], "error": ["", "x"],
                      "captions": [["a man smiling", "a man"], None], "caption_scores": [[0.3, 0.25], None]})
    data = RunData(out=tmp_path, stage_names=["caption"], stages={"caption": StageData("caption", table)})
    charts = "".join(_general_charts(data))
    assert "caption CLIP score" in charts and "caption length" in charts and "n=2" in charts
