"""The real pipeline end to end through the CLI: real faces + odd files, landmarks, pack."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from schemas import landmarks as lmk_schema
from schemas.common import manifest_schema
from schemas.pseudo_mask import CLASSES
from tests.fixtures.odd import write_odd_files

runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    return result


@pytest.fixture(scope="module")
def landmarks_run(casia_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "out"
    result = cli("run", "--source", "casia-webface", "--input", str(casia_tree), "--out", str(out),
                 "--stages", "landmarks", "--executor", "local", "--shard-size", "5")
    assert result.exit_code == 0, result.output
    return out


def test_manifests_validate(landmarks_run):
    out = landmarks_run
    expected = manifest_schema(lmk_schema.SCHEMA)
    for path in sorted((out / "manifests" / "landmarks").glob("*.parquet")):
        assert pq.read_schema(path).equals(expected), path
    plan = pq.read_table(out / "plan" / "plan.parquet").column("key").to_pylist()
    for stage in ("source", "landmarks"):
        keys = pq.read_table(out / "manifests" / stage).column("key").to_pylist()
        assert sorted(keys) == sorted(plan), stage


def test_odd_files_have_specific_reasons(landmarks_run, tmp_path):
    expected = {name: reason for name, reason in write_odd_files(tmp_path).items()}
    rows = {r["location"].split("/")[-1]: r for r in pq.read_table(landmarks_run / "manifests" / "source").to_pylist()
            if r["identity"] == "0009999"}
    for name, reason in expected.items():
        row = next((r for loc, r in rows.items() if loc == name), None)
        if row is None:  # not an image extension: never listed
            continue
        if reason:
            assert row["status"] == "error" and row["error"].startswith(reason), (name, row["error"])
        else:
            assert row["status"] == "ok", (name, row["error"])


def test_real_faces_have_sane_landmarks(landmarks_run):
    out = landmarks_run
    rows = pq.read_table(out / "manifests" / "landmarks").to_pylist()
    real = [r for r in rows if r["key"].startswith("000000")]
    ok = [r for r in real if r["status"] == "ok"]
    assert len(ok) >= len(real) - 1, [r["error"] for r in real]
    assert all(r["status"] == "ok" or r["error"] == "multiple_faces" for r in real)
    assert all(r["model"] == "mediapipe_face_mesh" and r["weights_random"] is False for r in ok)
    samples = {s["__key__"]: s for s in wds.WebDataset(sorted(map(str, (out / "shards").glob("*.tar"))),
                                                        shardshuffle=False)}
    assert set(samples) == {r["key"] for r in rows if r["status"] == "ok"}
    for key, s in samples.items():
        image = np.asarray(Image.open(io.BytesIO(s["jpg"])))
        h, w = image.shape[:2]
        lmk = np.load(io.BytesIO(s["lmk.npy"]))
        assert lmk.shape == (478, 3)  # the full preset refines the mesh (irises: Dense-Face's 478 points)
        assert (lmk[:, 0] >= 0).all() and (lmk[:, 0] < w).all() and (lmk[:, 1] >= 0).all() and (lmk[:, 1] < h).all()
        eyes_y = lmk[[33, 263], 1].mean()
        mouth_y = lmk[[13, 14], 1].mean()
        assert eyes_y < lmk[1, 1] < mouth_y  # eyes above nose tip above mouth
        depth = np.asarray(Image.open(io.BytesIO(s["depth.png"])))
        assert depth.shape == (h, w) and depth.dtype == np.uint16 and depth.max() == 65535 and depth[0, 0] == 0
        mask = np.asarray(Image.open(io.BytesIO(s["mask.png"])))
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {c[0] for c in CLASSES} | {0}
        assert len(np.unique(mask)) >= len(CLASSES) - 2  # a frontal-ish face shows nearly every class
        meta = json.loads(s["json"])
        assert meta["identity"] and meta["landmarks"]["mesh"] == "mediapipe478"
        assert meta["source"]["sha256"] and meta["landmarks"]["weights_sha256"]


def test_rerun_recomputes_nothing(landmarks_run, casia_tree):
    out = landmarks_run
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "run.json"}
    result = cli("run", "--source", "casia-webface", "--input", str(casia_tree), "--out", str(out),
                 "--stages", "landmarks", "--executor", "local")
    assert result.exit_code == 0, result.output
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "run.json"}
    assert after == snapshot


def test_cli_lists_and_errors(tmp_path):
    assert "casia-webface" in cli("sources").output
    assert "landmarks" in cli("stages").output
    result = cli("run", "--source", "casia-webface", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "error:" in result.output and len(result.output.strip().splitlines()) == 1
    result = cli("run", "--source", "nope", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "unknown source" in result.output
    result = cli("run", "--source", "sample", "--stages", "nope", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "unknown stage" in result.output
    assert not (tmp_path / "o").exists()




def test_restore_frame_flows_to_identity_with_drift(casia_tree, tmp_path):
    """detect -> restore (tiny CodeFormer, random weights: no real weights offline) -> identity."""
    out = tmp_path / "out"
    result = cli("run", "--source", "casia-webface", "--input", str(casia_tree), "--out", str(out),
                 "--stages", "identity,restore", "--executor", "local",
                 "--set", "detect.model=retinaface_mobile0.25", "--set", "identity.model=mobilefacenet",
                 "--set", "restore.weights=random", "--set", "restore.arch=tiny")
    assert result.exit_code == 0, result.output
    ident = [r for r in pq.read_table(out / "manifests" / "identity").to_pylist() if r["status"] == "ok"]
    assert ident and all(r["frame"] == "restored" and r["restore_cosine"] is not None for r in ident)
    restore = [r for r in pq.read_table(out / "manifests" / "restore").to_pylist() if r["status"] == "ok"]
    assert restore and all(r["weights_random"] for r in restore)  # never passed off as real
    samples = list(wds.WebDataset(sorted(map(str, (out / "shards").glob("*.tar"))), shardshuffle=False))
    assert samples and all("raw.jpg" in s and "id.npy" in s for s in samples)
    meta = json.loads(samples[0]["json"])
    assert meta["restore"]["weights_random"] is True and meta["identity_embedding"]["frame"] == "restored"
    assert meta["identity"] == meta["source"]["identity"]  # the label, not the stage's columns
