"""Identity pairing and shard streaming for the trainers, on shards the pipeline made from real faces."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import lfw_people, make_casia_tree
from training import pairs
from training.data import (DataConfig, FaceShardDataModule, PairedShardStream, decode_sample, make_caption,
                           worker_batches)
from training.heatmaps import landmark_subset, render_heatmaps
from training.pairs import PairConfig, build_index, is_current, load_index

STAGES = "detect,landmarks,identity,pose"
SETS = ["detect.model=retinaface_mobile0.25", "identity.model=mobilefacenet", "pose.model=lightweight_headpose"]


def pipeline_output(base: Path) -> Path:
    """3 identities x 3 real photos + 1 identity with one photo, through detect..pose, 4 per shard.

    Built once per session (both training test files call this with the session's base temp).
    """
    out = base / "faceweave_train" / "out"
    if (out / "shards" / "index.json").exists():
        return out
    tree = make_casia_tree(base / "faceweave_train" / "CASIA", n_people=3, n_photos=3)
    _, photos = lfw_people(4, 1)[3]
    (tree / "0000004").mkdir()
    shutil.copyfile(photos[0], tree / "0000004" / "001.jpg")
    from pipeline.config import resolve
    from pipeline.core.runner import run

    flags = dict(source="casia-webface", input=str(tree), out=str(out), stages=STAGES, executor="local",
                 shard_size=4)
    run(resolve(flags=flags, sets=SETS), quiet=True)
    return out


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory) -> Path:
    return pipeline_output(tmp_path_factory.getbasetemp())


@pytest.fixture()
def own_out(out_dir, tmp_path) -> Path:
    """A private copy of the output (for tests that rebuild the index with other settings)."""
    dst = tmp_path / "out"
    shutil.copytree(out_dir / "shards", dst / "shards")
    shutil.copytree(out_dir / "manifests", dst / "manifests")
    (dst / "shards" / pairs.INDEX_NAME).unlink(missing_ok=True)
    return dst


def manifest(out: Path, stage: str, *columns: str) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(out / "manifests" / stage, columns=["key", *columns]).to_pylist()}


def test_index_counts_single_image_identities(out_dir):
    index = load_index(out_dir / "shards")
    s = index.stats
    assert (s.samples, s.identities, s.single_image_identities, s.single_image_samples) == (10, 4, 1, 1)
    assert s.paired_samples == 9 and s.no_reference_samples == 0 and s.source == "manifests"
    assert index.candidates("0000004_001") == []
    ok, _ = index.usable(("jpg",), ("id.npy",))
    assert not ok[index.row("0000004_001")] and ok.sum() == 9


def test_pairs_same_identity_never_self_nor_same_file(out_dir):
    index = load_index(out_dir / "shards")
    source = manifest(out_dir, "source", "identity", "sha256")
    for key in index.keys:
        for ref in index.candidates(str(key)):
            assert ref != key
            assert source[ref]["identity"] == source[key]["identity"]
            assert source[ref]["sha256"] != source[key]["sha256"]


def test_near_duplicate_and_pose_gap_filters(own_out):
    cfg = PairConfig(max_cos=0.6, min_yaw_gap=8.0)
    stats = build_index(own_out / "shards", cfg)
    index = pairs.PairIndex(own_out / "shards")
    emb = {k: np.asarray(r["embedding"]) for k, r in manifest(own_out, "identity", "embedding").items()}
    yaw = {k: r["yaw"] for k, r in manifest(own_out, "landmarks", "yaw").items()}
    n_pairs = 0
    for key in map(str, index.keys):
        for ref in index.candidates(key):
            assert emb[key] @ emb[ref] <= 0.6 and abs(yaw[key] - yaw[ref]) >= 8.0
            n_pairs += 1
    assert 0 < n_pairs < 18  # the filters removed some of the 18 same-identity pairs, not all
    assert stats.paired_samples + stats.no_reference_samples + stats.single_image_samples == 10


def test_candidates_rules_on_synthetic_facts():
    e = np.eye(4, dtype=np.float32)
    facts = [
        {"embedding": e[0], "sha256": "a", "yaw": 0.0},
        {"embedding": e[0], "sha256": "b", "yaw": 30.0},  # near-duplicate of 0 (cosine 1)
        {"embedding": e[1], "sha256": "a", "yaw": 30.0},  # the same file as 0
        {"embedding": e[2], "sha256": "c", "yaw": 2.0},  # pose too close to 0 when a gap is asked
        {"embedding": None, "sha256": "d", "yaw": None},  # unknown embedding and yaw
    ]
    rng = np.random.default_rng(0)
    plain = pairs._candidates(list(range(5)), facts, PairConfig(), rng)
    assert plain[0] == [3, 4] and 0 not in plain[0]
    gap = pairs._candidates(list(range(5)), facts, PairConfig(min_yaw_gap=10.0), rng)
    assert gap[0] == []  # 1 near-dup, 2 same file, 3 too close, 4 yaw unknown
    capped = pairs._candidates(list(range(5)), facts, PairConfig(max_candidates=1), rng)
    assert all(len(c) <= 1 for c in capped)


def test_index_from_shards_alone_matches_manifests(out_dir, tmp_path):
    shutil.copytree(out_dir / "shards", tmp_path / "shards", ignore=shutil.ignore_patterns(pairs.INDEX_NAME))
    stats = build_index(tmp_path / "shards")
    assert stats.source == "shards"
    a, b = load_index(out_dir / "shards"), pairs.PairIndex(tmp_path / "shards")
    assert [a.candidates(str(k)) for k in a.keys] == [b.candidates(str(k)) for k in b.keys]
    assert list(a.identity) == list(b.identity)


def test_index_rebuilt_when_stale(own_out):
    shards = own_out / "shards"
    load_index(shards)
    assert is_current(shards, PairConfig())
    assert not is_current(shards, PairConfig(max_cos=0.5))
    tar = pairs.shard_files(shards)[0]
    tar.touch()
    assert not is_current(shards, PairConfig())
    load_index(shards)
    assert is_current(shards, PairConfig())


def test_reference_read_by_offset_matches_shard(out_dir):
    index = load_index(out_dir / "shards")
    row = index.row("0000002_003")
    emb = np.load(io.BytesIO(index.read(row, "id.npy")))
    ident = manifest(out_dir, "identity", "embedding")["0000002_003"]["embedding"]
    np.testing.assert_allclose(emb, ident, atol=1e-6)


def small_config(**kw) -> DataConfig:
    return DataConfig(**{**dict(batch_size=2, resolution=64, num_workers=0, shuffle_buffer=4), **kw})


def test_stream_decodes_paired_batches(out_dir):
    dm = FaceShardDataModule(out_dir / "shards", small_config())
    source = manifest(out_dir, "source", "identity")
    it = iter(dm.stream())
    for _ in range(3):
        b = next(it)
        assert b["image"].shape == (2, 3, 64, 64) and -1 <= b["image"].min() and b["image"].max() <= 1
        assert b["pose"].shape == (2, 3, 64, 64) and b["pose"].max() > 0  # pose stage ran
        assert b["landmarks"].shape == (2, 468, 3) and 0 <= b["landmarks"][..., :2].min()
        assert b["landmarks"][..., :2].max() <= 64
        assert b["mask"].dtype == torch.int64 and b["mask"].max() <= 9
        assert 0 <= b["depth"].min() and b["depth"].max() <= 1
        assert b["ref_embedding"].shape == (2, 128)
        for key, ref, cap, span in zip(b["key"], b["ref_key"], b["caption"], b["id_span"].tolist()):
            assert ref != key and source[ref]["identity"] == source[key]["identity"]
            assert key != "0000004_001"
            if span != [-1, -1]:
                assert cap[span[0]:span[1]] == "face"


def test_reference_image_and_pose_requirement(out_dir):
    dm = FaceShardDataModule(out_dir / "shards", small_config(reference_image=True, require_pose=True))
    b = next(iter(dm.stream()))
    assert b["ref_image"].shape == (2, 3, 64, 64) and not torch.equal(b["ref_image"], b["image"])
    stream = dm.stream()
    assert stream.required[-1] == "pose.png" and stream.ref_required == ("id.npy", "jpg")


def keys_of(batches) -> list[tuple]:
    return [(tuple(b["key"]), tuple(b["ref_key"]), tuple(b["caption"])) for b in batches]


def test_stream_resumes_where_it_stopped(out_dir):
    dm = FaceShardDataModule(out_dir / "shards", small_config(prompt_dropout=0.5))
    stream = dm.stream()
    it = iter(stream)
    unbroken = keys_of(next(it) for _ in range(11))  # 9 usable samples: crosses two epochs
    stream.start_batch = 7
    it = iter(stream)
    assert keys_of(next(it) for _ in range(4)) == unbroken[7:]
    assert worker_batches(7, 0, 2) == 4 and worker_batches(7, 1, 2) == 3


@pytest.mark.parametrize("n_units", [2, 5])  # 3 shards: split by shard, and by sample
def test_units_partition_each_epoch(out_dir, n_units):
    dm = FaceShardDataModule(out_dir / "shards", small_config())
    stream: PairedShardStream = dm.stream()
    seen = []
    for unit in range(n_units):
        keys = [s["__key__"] for s in stream._epoch(1, unit, n_units)]
        assert len(keys) == stream.epoch_plan(1, unit, n_units)[2]
        seen += keys
    assert sorted(seen) == sorted(str(k) for k in dm.index.keys if k != "0000004_001")


def test_datamodule_state_roundtrip(out_dir):
    dm = FaceShardDataModule(out_dir / "shards", small_config())
    dm.on_after_batch_transfer({}, 0)
    dm.on_after_batch_transfer({}, 0)
    other = FaceShardDataModule(out_dir / "shards", small_config())
    other.load_state_dict(dm.state_dict())
    assert other.stream().start_batch == 2


def test_caption_subject_replaced_and_fallback():
    import random

    cfg = DataConfig(prompt_dropout=0.0)
    meta = {"caption": {"captions": ["a smiling woman in a hat"], "subject_spans": [[10, 15]],
                        "subject_words": ["woman"]}}
    assert make_caption(meta, random.Random(0), cfg) == ("a smiling face in a hat", (10, 14))
    meta["caption"]["subject_spans"] = [[-1, -1]]
    assert make_caption(meta, random.Random(0), cfg) == ("a smiling woman in a hat", (-1, -1))
    assert make_caption({}, random.Random(0), cfg) == ("a photo of a face", (13, 17))
    dropped = DataConfig(prompt_dropout=1.0)
    assert make_caption(meta, random.Random(0), dropped) == ("", (-1, -1))


def test_decode_without_pose_or_face_mask(out_dir):
    import tarfile

    with tarfile.open(pairs.shard_files(out_dir / "shards")[0]) as tar:
        raw = {}
        for m in tar:
            key, _, suffix = m.name.partition(".")
            if key == "0000001_001":
                raw[suffix] = tar.extractfile(m).read()
    raw.pop("pose.png")
    sample = decode_sample(raw, 32)
    assert sample["pose"].abs().sum() == 0
    assert torch.equal(sample["face_mask"][0] > 0, sample["mask"] > 0)
    assert json.loads(raw["json"])["key"] == sample["key"]
    with pytest.raises(KeyError):
        decode_sample(raw, 32, require_pose=True)


def test_heatmaps_peak_at_landmarks():
    pts = torch.tensor([[[11.0, 21.0], [63.0, 0.5]]])  # image pixels of a 64 image
    heat = render_heatmaps(pts, image_size=64, size=32, sigma=1.0)
    assert heat.shape == (1, 2, 32, 32)
    y, x = divmod(int(heat[0, 0].argmax()), 32)
    assert (x, y) == (5, 10)  # 11, 21 -> 5.5, 10.5 in the map: cell 5, 10 (centres at +0.5)
    assert heat.max() <= 1 and heat.min() >= 0
    assert len(landmark_subset("all")) == 468 and len(landmark_subset("stride:4")) == 117
    assert 100 < len(landmark_subset("mask_loops")) < 200
    with pytest.raises(ValueError):
        landmark_subset("eyes")


def test_loader_with_workers_resumes(out_dir):
    cfg = small_config(num_workers=2, batch_size=1)
    dm = FaceShardDataModule(out_dir / "shards", cfg)
    it = iter(dm.train_dataloader())
    unbroken = keys_of(next(it) for _ in range(7))
    del it
    assert len({k for b in unbroken for k in b[0]}) > 1
    dm.consumed = 4
    it = iter(dm.train_dataloader())
    assert keys_of(next(it) for _ in range(3)) == unbroken[4:]
