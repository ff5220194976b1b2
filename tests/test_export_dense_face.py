"""The ``dense-face`` export read by the rules of Dense-Face's released loader (``MyDatasetFace``).

The rules are written from what the loader does (docs/exports.md), not from its code: the CSV
columns by position, ``zfill(7)`` subject ids matched to the subject list and folder names, the
``images`` -> ``feat_file_v2`` / ``landmarks`` path rewriting, ``(1, 512)`` features, ``(478, 64,
64)`` heatmaps, the exact-colour 10-channel reading of ``masks/`` (cv2, BGR) and the bbox crop.

The 512-d run uses the IR-SE50 architecture with random weights (ArcFace weights are not
available offline): the files' shapes and meaning are real, the embedding values are not.
Its identity folders are LFW names, so the export must map them to 7-digit subject ids.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.readers.export import export
from pipeline.readers.export import dense_face
from pipeline.readers.export import dense_face_maps as maps
from tests.conftest import lite_run_once
from tests.test_audit import build_out

PEOPLE = {"Colin_Powell": 3, "Tony_Blair": 3, "Hugo_Chavez": 3, "Ariel_Sharon": 1}
NOSE_TIP, RIGHT_IRIS, LEFT_IRIS, RIGHT_CHEEK, LEFT_CHEEK = 1, 468, 473, 205, 425


def build_out_512(tmp_path_factory) -> Path:
    """A lite run with the 478-point mesh and 512-d IR-SE50 embeddings (random weights), once."""
    tree = {person: [(person, i) for i in range(1, n + 1)] for person, n in PEOPLE.items()}
    return lite_run_once(tmp_path_factory, "run-512", tree, "identity.model=arcface_irse50", "identity.weights=random")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("df") / "dense"
    summary = export(build_out_512(tmp_path_factory), "dense-face", root)
    return root, summary


def loader_rows(root: Path) -> list[dict]:
    """The rows the loader keeps, read by its rules; asserts the rules that would drop a row."""
    data_dir = root / "CASIA"
    csv_path = next(data_dir.glob("casiaFacesDataset256_*_samples_headpose.csv"))
    n = csv_path.name.split("_")[1]
    subjects = {s.strip() for s in (data_dir / f"CASIA_subject_{n}_samples.txt").read_text().splitlines()}
    rows = []
    with open(csv_path) as f:
        for i, row in enumerate(csv.reader(f, delimiter=",")):
            if i == 0:
                continue  # the header
            face, ld_csv, mask, bbox, sub = row[0], row[3], row[4], row[9], row[10]
            ref, ref_bbox, caption, pose = row[-4], row[-3], row[-2], row[-1]
            assert sub.zfill(7) in subjects and sub.zfill(7) == sub == face.split("/")[1]
            assert any(w in caption for w in dense_face.LOADER_WORDS)
            feat = data_dir / face.replace("images", "feat_file_v2").replace(face[-3:], "pth")
            heat = data_dir / face.replace("images", "landmarks").replace(".jpg", ".npy")
            rows.append(dict(face=data_dir / face, ld_csv=data_dir / ld_csv, mask=data_dir / mask, bbox=bbox,
                             subject=sub, ref=data_dir / ref, ref_bbox=ref_bbox, pose=pose, feat=feat,
                             heat=heat, xyz=data_dir / row[5]))
    return rows


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.strip()[1:-1].split(",")]


def test_every_row_survives_the_loader(exported):
    root, summary = exported
    rows = loader_rows(root)
    assert len(rows) == summary["samples"] == 9 and summary["identities"] == 3
    for r in rows:
        feat = torch.load(r["feat"], map_location="cpu", weights_only=True)
        assert isinstance(feat, torch.Tensor) and feat.shape == (1, 512) and feat.dtype == torch.float32
        heat = np.load(r["heat"])
        assert heat.shape == (478, 64, 64) and heat.dtype == np.float32
        pitch, yaw, roll = (float(v.strip()[1:-1]) for v in r["pose"][1:-1].split(","))
        assert max(abs(pitch), abs(yaw), abs(roll)) < 90
        assert r["ref"] != r["face"] and r["ref"].parent == r["face"].parent  # another photo, same subject
        assert cv2.imread(str(r["ref"])) is not None


def test_boxes_are_square_and_crop_the_face(exported):
    root, _ = exported
    for r in loader_rows(root):
        for box in (_floats(r["bbox"]), _floats(r["ref_bbox"])):
            x1, y1, x2, y2 = box
            assert x2 - x1 == pytest.approx(y2 - y1, abs=1e-9) and 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert 0.55 < x2 - x1 < 0.8  # the official data: 0.60-0.72 of the crop
        image = cv2.imread(str(r["face"]))
        x1, y1, x2, y2 = _floats(r["bbox"])
        h, w = image.shape[:2]
        crop = image[int(y1 * h):int(y2 * h), int(x1 * w):int(x2 * w)]  # the loader's identity-loss crop
        points = np.loadtxt(r["ld_csv"], delimiter=",")
        nose = points[NOSE_TIP] * [w, h]
        assert crop.shape[0] == pytest.approx(crop.shape[1], abs=1)
        assert int(x1 * w) < nose[0] < int(x2 * w) and int(y1 * h) < nose[1] < int(y2 * h)


def test_masks_mean_the_official_channels(exported):
    root, _ = exported
    rows = loader_rows(root)
    hits = {name: 0 for name in ("nose", "right_iris", "left_iris", "cheeks", "corner")}
    for r in rows:
        bgr = cv2.imread(str(r["mask"]))
        assert bgr.shape == (256, 256, 3)
        parts = maps.channels(bgr)
        assert parts.sum(axis=0).min() == 1 and parts.sum(axis=0).max() == 1  # palette only, no black
        assert 0.4 < parts[0].mean() < 0.95  # background is the largest channel
        points = np.loadtxt(r["ld_csv"], delimiter=",")

        def channel_at(index: int) -> int:
            x, y = np.clip((points[index] * 256).astype(int), 0, 255)
            return int(np.argmax(parts[:, y, x]))

        hits["nose"] += channel_at(NOSE_TIP) == 5
        hits["right_iris"] += channel_at(RIGHT_IRIS) == 4
        hits["left_iris"] += channel_at(LEFT_IRIS) == 9
        # On a turned head the far cheek's mesh point can fall outside the 2D face-oval polygon of
        # our pseudo mask, so a sample counts when its cheeks are in the face channel, or the near one.
        hits["cheeks"] += 3 in (channel_at(RIGHT_CHEEK), channel_at(LEFT_CHEEK))
        hits["corner"] += int(np.argmax(parts[:, 0, 0])) == 0
        blocks = parts.reshape(10, 64, 4, 64, 4).mean(axis=(2, 4))  # the loader's 4x4 averaging
        assert blocks.shape == (10, 64, 64) and blocks[3].sum() > blocks[5].sum() > 0
    assert all(v >= 0.9 * len(rows) for v in hits.values()), hits


def test_xyz_maps_attributes_and_key_map(exported):
    root, summary = exported
    rows = loader_rows(root)
    for r in rows:
        xyz = np.load(r["xyz"])
        assert xyz.shape == (256, 256, 3) and xyz.dtype == np.float32
        assert tuple(xyz[0, 0]) == maps.XYZ_BACKGROUND
        face = ~np.all(xyz == np.float32(maps.XYZ_BACKGROUND), axis=2)
        assert 0.1 < face.mean() < 0.9
        ys, xs = np.nonzero(face)
        assert np.corrcoef(ys, xyz[ys, xs, 0])[0, 1] > 0.99 and np.corrcoef(xs, xyz[ys, xs, 1])[0, 1] > 0.99
        assert xyz[face][:, :2].min() >= 0 and xyz[face][:, :2].max() <= 64
        assert 0 <= xyz[face][:, 2].min() and xyz[face][:, 2].max() <= 1
    attrs = json.loads(next((root / "CASIA/CASIAFaces").glob("*/attributes/001.json")).read_text())
    assert set(attrs) == {"emotion_estimated", "emotion_proba"}  # the lite attributes stage: emotion only
    assert sum(attrs["emotion_proba"].values()) == pytest.approx(1, abs=1e-3)
    with open(root / "CASIA/faceweave_keys.csv") as f:
        keys = list(csv.DictReader(f))
    by_identity = {}
    for k in keys:
        by_identity.setdefault(k["identity"], set()).add(k["subject_id"])
        assert k["reference_key"] != k["key"] and k["reference_key"].rsplit("_", 1)[0] == k["identity"]
    assert all(len(v) == 1 for v in by_identity.values())  # one subject id per identity
    assert sorted(s for v in by_identity.values() for s in v) == ["0000001", "0000002", "0000003"]
    assert "Ariel_Sharon" not in by_identity and summary["single_image_identities"] == 1
    assert summary["mask_channels"][3] == "face" and summary["msmask"] == "face_region"


def test_attributes_use_the_official_keys():
    from pipeline.readers.export import Sample
    from schemas import attributes as sa

    att = {"age_label": "young_adult", "age_probs": [0.1, 0.1, 0.6, 0.1, 0.1], "gender_probs": [0.2, 0.8],
           "celeba_probs": [0.5] * 40, "emotion": "happy", "emotion_probs": [0, 0, 0, 1, 0, 0, 0]}
    out = dense_face.attributes_json(Sample("k", "i", {"attributes": att}, {}))
    assert set(out) == {"age_proba", "age_estimated", "sex_proba", "attr_proba", "emotion_estimated",
                        "emotion_proba"}
    assert out["sex_proba"] == {"male": 0.8, "female": 0.2} and out["age_estimated"] == 27
    assert list(out["attr_proba"])[0] == "5_o_clock_shadow" and len(out["attr_proba"]) == len(sa.CELEBA_ATTRIBUTES)
    assert dense_face.attributes_json(Sample("k", "i", {}, {})) == {}


def test_subject_ids():
    assert dense_face.subject_ids(["45", "0000123"]) == {"45": "0000045", "0000123": "0000123"}
    assert dense_face.subject_ids(["b_name", "a_name"]) == {"a_name": "0000001", "b_name": "0000002"}
    ids = dense_face.subject_ids(["images_of_x", "12345678"])
    assert all(v.zfill(7) == v and v.isdigit() for v in ids.values())


def test_128d_and_468_point_runs_are_refused(tmp_path_factory, tmp_path):
    lite = build_out(tmp_path_factory)  # 128-d MobileFaceNet
    with pytest.raises(ValueError) as err:
        export(lite, "dense-face", tmp_path / "d128")
    assert "\n" not in str(err.value) and "512" in str(err.value) and "128-d mobilefacenet" in str(err.value)
    assert not (tmp_path / "d128").exists()
    out = build_out_512(tmp_path_factory)
    with pytest.raises(ValueError, match="images"):
        export(out, "dense-face", tmp_path / "images" / "x")
    mesh468 = _with_468_points(out, tmp_path / "out468")
    with pytest.raises(ValueError) as err:
        export(mesh468, "dense-face", tmp_path / "d468")
    assert "\n" not in str(err.value) and "landmarks.refine=true" in str(err.value)


def _with_468_points(out: Path, dst: Path) -> Path:
    """A copy of ``out`` whose landmarks manifest says 468 points (a run without refine)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(out, dst)
    for path in (dst / "manifests" / "landmarks").glob("*.parquet"):
        table = pq.read_table(path)
        i = table.schema.get_field_index("n_landmarks")
        column = pa.array([468] * table.num_rows, table.schema.field(i).type)
        pq.write_table(table.set_column(i, table.schema.field(i), column), path)
    return dst
