"""``pipeline export``: every format read back the way its trainer's loader reads it."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.readers import audit
from pipeline.readers.export import FALLBACK_CAPTION, Sample, caption_of, export
from pipeline.readers.export import dense_face
from tests.test_audit import DUPLICATE, MISFILED, build_out, copy_out

RUMSFELD = "identity IN ('0000003', '0000004')"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = build_out(tmp_path_factory)
    audit.run_audit(out)
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_hf_loads_with_datasets(out, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    summary = export(out, "hf", tmp_path / "hf", where="identity <> '0000005'")
    ds = datasets.load_dataset("webdataset", data_dir=str(tmp_path / "hf"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == summary["samples"] == 16
    assert isinstance(ds.features["jpg"], datasets.Image) and isinstance(ds.features["mask.png"], datasets.Image)
    row = next(r for r in ds if r["__key__"] == MISFILED)
    assert row["jpg"].size == (512, 512) and row["mask.png"].size == (512, 512)
    assert len(row["id.npy"]) == 128 and len(row["lmk.npy"]) == 478 and len(row["expr.npy"]) == 10
    meta = row["json"]
    assert meta["caption"] == FALLBACK_CAPTION and meta["audit"]["outlier"] is True
    assert meta["source"]["identity"] == "0000001" and meta["pose"]["yaw"] is not None


def test_pairs_skip_self_and_audit_excluded(out, tmp_path):
    root = tmp_path / "pairs"
    summary = export(out, "pairs", root)
    lines = [json.loads(x) for x in (root / "pairs.jsonl").read_text().splitlines()]
    assert lines and len(lines) == summary["pairs"] and summary["excluded_by_audit"] == 2
    keys = {x["target_key"] for x in lines} | {x["reference_key"] for x in lines}
    assert MISFILED not in keys and DUPLICATE not in keys
    for x in lines:
        assert x["target_key"] != x["reference_key"] and x["target"] != x["reference"]
        assert x["target_key"].split("_")[0] == x["reference_key"].split("_")[0] == x["identity"]
        assert Image.open(root / x["target"]).size == Image.open(root / x["target_mask"]).size
        assert np.load(root / x["reference_embedding"]).shape == (128,)
        assert x["caption"] == FALLBACK_CAPTION and x["caption_is_fallback"]
    eligible = {}
    for k in keys:
        eligible[k.split("_")[0]] = eligible.get(k.split("_")[0], 0) + 1
    refs = {}
    for x in lines:
        refs.setdefault(x["target_key"], set()).add(x["reference_key"])
    assert all(len(v) == min(4, eligible[t.split("_")[0]] - 1) for t, v in refs.items())
    bare = export(copy_out(out, tmp_path / "bare"), "pairs", tmp_path / "pairs-bare")
    assert bare["excluded_by_audit"] == 0 and any("audit" in w for w in bare["warnings"])
    assert bare["pairs"] > summary["pairs"]


def test_f2d_reads_like_face2diffusion(out, tmp_path):
    """A lite (128-d) run still feeds f2d: it exports what Face2Diffusion computes MSID from."""
    root = tmp_path / "f2d"
    summary = export(out, "f2d", root, where=RUMSFELD)
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == summary["samples"] == 6
    for x in lines:
        assert Image.open(root / x["image"]).size == (512, 512)
        assert Image.open(root / x["aligned"]).size == (112, 112)
        assert np.load(root / x["points"]).shape == (5, 2) and np.load(root / x["expression"]).shape == (10,)
        assert x["msid"] is None and "id_embedding" not in x and "mask" not in x


def test_embedding_exports_refuse_128d(out, tmp_path):
    for fmt in ("dense-face", "ip-adapter-faceid", "instantid"):
        with pytest.raises(ValueError, match="512-d"):
            export(out, fmt, tmp_path / fmt, where=RUMSFELD)
        assert not (tmp_path / fmt).exists()


def test_exports_never_modify_out(out, tmp_path):
    before = _snapshot(out)
    export(out, "pairs", tmp_path / "a", where="identity = '0000005'")
    with pytest.raises(ValueError, match="inside"):
        export(out, "f2d", out / "exports")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        export(out, "f2d", tmp_path / "full")
    with pytest.raises(ValueError, match="unknown export format"):
        export(out, "nope", tmp_path / "b")
    assert _snapshot(out) == before
    assert json.loads((tmp_path / "a" / "export.json").read_text())["where"] == "identity = '0000005'"


def test_source_images_are_hard_linked_unless_copy(tmp_path):
    """A run without detect packs the source JPEG bytes: those files are linked, not copied."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from tests.conftest import make_casia_tree

    tree = make_casia_tree(tmp_path / "tree", n_people=1, n_photos=3)
    result = CliRunner().invoke(app, ["run", "--source", "casia-webface", "--input", str(tree), "--out",
                                      str(tmp_path / "out"), "--stages", "landmarks", "--executor", "local", "-q"])
    assert result.exit_code == 0, result.output
    linked = export(tmp_path / "out", "pairs", tmp_path / "linked")
    copied = export(tmp_path / "out", "pairs", tmp_path / "copied", copy=True)
    assert linked["files"]["linked"] == 3 and copied["files"]["linked"] == 0
    image = next((tmp_path / "linked" / "images").iterdir())
    assert os.stat(image).st_nlink == 2 and os.stat(tmp_path / "copied" / "images" / image.name).st_nlink == 1


def test_caption_choice():
    ran = Sample("k", "i", {"caption": {"captions": ["a man smiling", "a man"]}}, {})
    assert caption_of(ran) == ("a man smiling", True)
    assert caption_of(Sample("k", "i", {"caption": {"captions": []}}, {})) == (FALLBACK_CAPTION, False)
    assert caption_of(Sample("k", "i", {}, {})) == (FALLBACK_CAPTION, False)
    cap = {"captions": ["a man smiling"], "caption_scores": [0.31], "candidates": ["a man smiling", "a man"],
           "candidate_sources": ["blip-large:beam", "git:sample"], "model": "openai/clip-vit-large-patch14"}
    assert dense_face.captions_json(Sample("k", "i", {"caption": cap}, {}), "a man smiling", True) == {
        "a man smiling": {"model": "blip-large", "CLIP_score": 0.31}}
    assert dense_face.loader_caption("a person in a suit") == dense_face.DENSE_FACE_FALLBACK
    assert dense_face.loader_caption("a woman in a suit") == "a woman in a suit"
