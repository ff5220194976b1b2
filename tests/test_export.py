"""``pipeline export``: every format read back the way its trainer's loader reads it."""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import audit
from pipeline.export import FALLBACK_CAPTION, Sample, caption_of, export
from pipeline.export import dense_face
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


def _load_embedding(path: Path | str) -> torch.Tensor:
    # The trainers call torch.load(path) on a pickled numpy array; torch >= 2.6 needs weights_only=False.
    return torch.from_numpy(torch.load(path, map_location="cpu", weights_only=False))


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


def _dense_face_rows(root: Path) -> list[dict]:
    """What Dense-Face's MyDatasetFace(dataset="CASIA") keeps from the CSV, by its column indices."""
    data_dir = root / "CASIA"
    csv_name = next(data_dir.glob("casiaFacesDataset256_*_samples_headpose.csv"))
    n = csv_name.name.split("_")[1]
    subjects = {line.strip() for line in (data_dir / f"CASIA_subject_{n}_samples.txt").read_text().splitlines()}
    kept = []
    with open(csv_name) as f:
        for i, row in enumerate(csv.reader(f, delimiter=",")):
            if i == 0:
                continue
            file_p, mask_p, cap_p, ref_p, bbox, ref_bbox = row[0], row[4], row[-2], row[-4], row[9], row[-3]
            sub_id, key_point, ld_file = row[10].zfill(7), row[-1], row[3]
            assert sub_id in subjects
            assert any(w in cap_p for w in dense_face.LOADER_WORDS)  # its caption filter
            feat = torch.load(data_dir / file_p.replace("images", "feat_file_v2").replace(file_p[-3:], "pth"),
                              weights_only=False)
            kept.append(dict(file=data_dir / file_p, mask=data_dir / mask_p, ref=data_dir / ref_p, feat=feat,
                             bbox=bbox, ref_bbox=ref_bbox, pose=key_point, ld=data_dir / ld_file))
    return kept


def test_dense_face_reads_like_its_loader(out, tmp_path):
    import cv2

    root = tmp_path / "df"
    summary = export(out, "dense-face", root, where=RUMSFELD)
    assert summary["samples"] == 6 and summary["identities"] == 2 and summary["sample_num"] == 2
    assert any("512" in w for w in summary["warnings"])  # MobileFaceNet is 128-d
    rows = _dense_face_rows(root)
    assert len(rows) == 6
    palette = np.array(dense_face.PALETTE)
    for r in rows:
        assert isinstance(r["feat"], np.ndarray) and r["feat"].shape == (1, 128)
        target = cv2.imread(str(r["file"]))
        assert target.shape == (256, 256, 3) and cv2.imread(str(r["ref"])) is not None
        ld = np.load(str(r["file"]).replace("images", "landmarks").replace(".jpg", ".npy"))
        assert ld.shape == (478, 64, 64) and ld.max() == pytest.approx(1.0)
        points = np.loadtxt(r["ld"], delimiter=",")
        assert points.shape == (478, 2) and points.min() >= 0 and points.max() <= 1
        peak = np.unravel_index(ld[1].argmax(), ld[1].shape)  # nose tip: (row, col) = (y, x)
        assert peak == (int(points[1, 1] * 64), int(points[1, 0] * 64))
        mask = cv2.imread(str(r["mask"]))
        parts = np.all(mask == palette[:, None, None], axis=3).astype(int)
        parts = (parts.reshape(10, 64, 4, 64, 4).mean(axis=(2, 4)) >= 0.5)
        assert parts[0].sum() > 500 and parts[4].any() and parts[5].any()  # face, both eyes
        pitch, yaw, roll = (float(v.strip()[1:-1]) for v in r["pose"][1:-1].split(","))
        assert all(abs(a) < 90 for a in (pitch, yaw, roll))
        bbox = [float(v) for v in r["bbox"][1:-1].split(",")]
        assert 0 <= bbox[0] < bbox[2] <= 1.2 and 0 <= bbox[1] < bbox[3] <= 1.2
    caption = json.loads((root / "CASIA/CASIAFaces/0000003/captions/001.json").read_text())
    assert caption == {FALLBACK_CAPTION: {"model": "faceweave-fallback", "CLIP_score": None}}
    attrs = json.loads((root / "CASIA/CASIAFaces/0000003/attributes/001.json").read_text())
    assert attrs["emotion_estimated"] and sum(attrs["emotion_proba"].values()) == pytest.approx(1, abs=1e-3)


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
    root = tmp_path / "f2d"
    summary = export(out, "f2d", root, where=RUMSFELD)
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == summary["samples"] == 6
    for x in lines:
        image, mask = Image.open(root / x["image"]), np.asarray(Image.open(root / x["mask"]))
        assert image.size == mask.shape[::-1] and set(np.unique(mask)) == {0, 255}
        idvec = torch.tensor(np.load(root / x["id_embedding"])).unsqueeze(0)  # as inference_f2d.py
        assert idvec.shape == (1, 128) and torch.linalg.norm(idvec) == pytest.approx(1, abs=1e-4)
        assert Path(root / x["image"]).with_suffix(".npy") == root / x["id_embedding"]
        assert np.load(root / x["expression"]).shape == (10,)


def test_ip_adapter_faceid_reads_like_its_script(out, tmp_path):
    root = tmp_path / "ip"
    summary = export(out, "ip-adapter-faceid", root, where=RUMSFELD)
    data = json.load(open(root / "data.json"))
    assert len(data) == summary["samples"] == 6
    embeds = []
    for item in data:
        assert Image.open(os.path.join(root, item["image_file"])).convert("RGB").size == (512, 512)
        assert os.path.isabs(item["id_embed_file"]) and item["text"] == FALLBACK_CAPTION
        embeds.append(_load_embedding(item["id_embed_file"]))
    assert torch.stack(embeds).shape == (6, 128)
    assert any("512" in w for w in summary["warnings"])


def test_instantid_reads_like_its_trainer(out, tmp_path):
    root = tmp_path / "iid"
    export(out, "instantid", root, where=RUMSFELD)
    items = [json.loads(line) for line in open(root / "instantid.jsonl")]
    assert len(items) == 6
    for item in items:
        image = Image.open(os.path.join(root, item["file_name"]))
        kps = np.array(item["landmarks"])
        assert kps.shape == (5, 2) and (kps >= 0).all() and (kps < image.size[0]).all()
        assert kps[0, 0] < kps[1, 0] and kps[[0, 1], 1].max() < kps[2, 1] < kps[[3, 4], 1].min()
        x1, y1, x2, y2 = item["bbox"]
        assert x1 < kps[:, 0].min() and kps[:, 0].max() < x2 and y1 < kps[:, 1].min() and kps[:, 1].max() < y2
        emb = _load_embedding(os.path.join(root, item["insightface_feature_file"])).reshape(1, -1)
        assert emb.shape == (1, 128) and item["additional_feature"] == FALLBACK_CAPTION


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
