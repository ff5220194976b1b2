"""Scoring parsing against ground truth: warps, IoU maths on synthetic maps, the stage's gt_miou."""
from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest

import schemas.parsing as sp
from schemas.gt import GT_PARSING
from stages import parsing_eval as pe
from stages.base import Result, Sample
from stages.parsing import Parsing

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SKIN, NOSE, HAIR = (sp.CLASSES.index(c) for c in ("skin", "nose", "hair"))


def block(size: int = 40, x0: int = 10, label: int = SKIN) -> np.ndarray:
    """Background with a 10x10 square of ``label`` whose left edge is at ``x0``."""
    labels = np.zeros((size, size), np.uint8)
    labels[10:20, x0:x0 + 10] = label
    return labels


def png(labels: np.ndarray) -> bytes:
    return cv2.imencode(".png", labels)[1].tobytes()


def test_identity_warp_scores_one() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 19, size=(32, 48), dtype=np.uint8)
    warped = pe.warp_labels(gt, IDENTITY, (48, 32))
    assert np.array_equal(warped, gt)
    scores = pe.miou_per_class(warped, gt)
    assert set(scores) == {sp.CLASSES[i] for i in np.unique(gt)}
    assert all(v == 1.0 for v in scores.values())
    assert pe.mean_iou(warped, gt) == 1.0


def test_shifted_square_has_known_iou() -> None:
    gt, pred = block(x0=10), block(x0=15)  # overlap 5x10 of two 10x10 squares
    skin = 50 / 150
    background = (1600 - 150) / (1600 - 50)
    assert pe.miou_per_class(pred, gt) == pytest.approx({"background": background, "skin": skin})
    assert pe.mean_iou(pred, gt) == pytest.approx((skin + background) / 2)


def test_classes_in_one_map_only_count_as_zero() -> None:
    gt, pred = block(), block(label=NOSE)
    scores = pe.miou_per_class(pred, gt)
    assert scores["skin"] == 0.0 and scores["nose"] == 0.0 and "hair" not in scores
    assert scores["background"] == 1.0
    assert pe.mean_iou(pred, gt) == pytest.approx(1 / 3)


def test_translation_warp_marks_outside_pixels_ignored() -> None:
    gt = block(x0=10)
    shift = [1.0, 0.0, -5.0, 0.0, 1.0, 0.0]  # crop x = source x - 5
    warped = pe.warp_labels(gt, shift, (40, 40))
    assert np.array_equal(warped[:, :35], gt[:, 5:])
    assert (warped[:, 35:] == pe.IGNORE).all()
    pred = block(x0=5)
    pred[:, 35:] = HAIR  # wrong, but outside the source image: not scored
    assert pe.mean_iou(pred, warped) == 1.0
    assert pe.mean_iou(pred, np.full_like(pred, pe.IGNORE)) is None


def test_scaling_warp_never_blends_labels() -> None:
    gt = np.zeros((64, 64), np.uint8)
    gt[:, 32:] = HAIR
    gt[20:40, 10:50] = NOSE
    half = pe.warp_labels(gt, [0.5, 0.0, 0.0, 0.0, 0.5, 0.0], (32, 32))
    assert set(np.unique(half)) == {0, NOSE, HAIR}
    rotated = pe.warp_labels(gt, cv2.getRotationMatrix2D((32, 32), 30, 1.3), (64, 64))
    assert set(np.unique(rotated)) <= {0, NOSE, HAIR, pe.IGNORE}


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        pe.iou_per_class(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="below 19"):
        pe.iou_per_class(np.full((4, 4), 19, np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="affine"):
        pe.warp_labels(block(), [1.0, 0.0, float("nan"), 0.0, 1.0, 0.0], (40, 40))
    assert pe.affine_matrix([1, 2, 3]) is None and pe.affine_matrix(None) is None
    with pytest.raises(ValueError):
        pe.decode_labels(b"nope")


def test_gt_in_frame_and_score() -> None:
    gt = block()
    assert pe.gt_in_frame(gt, "source", (40, 40)) is gt
    assert pe.gt_in_frame(gt, "source", (20, 40)) is None  # not the source frame after all
    assert pe.gt_in_frame(gt, "aligned", (40, 40)) is None  # no affine: cannot be placed
    assert pe.score(block(x0=15), png(gt), "source") == pytest.approx(pe.mean_iou(block(x0=15), gt))
    double = [2.0, 0.0, 0.0, 0.0, 2.0, 0.0]
    pred = np.zeros((80, 80), np.uint8)
    pred[19:39, 19:39] = SKIN  # source pixels 10..19 have their centres at crop 20..38
    assert pe.score(pred, png(gt), "restored", double) == 1.0
    assert pe.score(pred, png(gt), "aligned", double) == 1.0


def stub_stage(labels: np.ndarray) -> Parsing:
    """A parsing stage whose net always answers ``labels``."""
    stage = Parsing(weights="random", device="cpu")
    stage._net = object()
    stage.labels = lambda images: [labels.copy() for _ in images]  # type: ignore[method-assign]
    return stage


def test_parsing_stage_writes_gt_miou() -> None:
    gt = block()
    crop_pred = np.kron(block(x0=15), np.ones((2, 2), np.uint8))  # the crop is 2x the source
    image = np.zeros((80, 80, 3), np.uint8)
    detect = Result(columns={"affine": [2.0, 0.0, 0.0, 0.0, 2.0, 0.0]})
    files = {"files": {GT_PARSING: png(gt)}}
    batch = [
        Sample("a", "i", image, frame="aligned", upstream={"detect": detect}, meta=files),
        Sample("b", "i", image, frame="aligned", meta=files),  # detect not in the run
        Sample("c", "i", image, frame="aligned", upstream={"detect": detect}),  # no ground truth
        Sample("d", "i", image, frame="aligned", upstream={"detect": detect},
               meta={"files": {GT_PARSING: b"garbage"}}),
    ]
    results = stub_stage(crop_pred).process(batch)
    assert [r.status for r in results] == ["ok"] * 4
    expected = pe.mean_iou(crop_pred, pe.warp_labels(gt, detect.columns["affine"], (80, 80)))
    assert 0.5 < expected < 0.9  # the 5 px shift in the source is 10 px in the crop
    assert results[0].columns["gt_miou"] == pytest.approx(expected)
    assert [r.columns["gt_miou"] for r in results[1:]] == [None, None, None]
    table = pa.Table.from_pylist([r.columns for r in results], schema=sp.SCHEMA)
    assert table.column("gt_miou").null_count == 3
    assert "detect" in Parsing.optional_reads and "detect" not in Parsing.reads


def test_run_scores_celebahq_ground_truth(tmp_path) -> None:
    import pyarrow.parquet as pq

    from pipeline.config import resolve
    from pipeline.core.runner import run
    from tests.conftest import lfw_photos, put
    from tests.test_sources_hq import PARTS, write_parts

    root = tmp_path / "CelebAMask-HQ"
    for i, photo in enumerate(lfw_photos(("Colin_Powell", "Tony_Blair"), per_person=1)):
        put(root, f"CelebA-HQ-img/{i}.jpg", photo)
    write_parts(root, 0, PARTS)  # only image 0 has ground truth
    cfg = resolve(flags={"source": "celeba-hq", "input": str(root), "out": str(tmp_path / "out"),
                         "stages": "parsing", "executor": "local"},
                  sets=["parsing.weights=random", "parsing.device=cpu"])
    run(cfg, quiet=True)
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "manifests" / "parsing").to_pylist()}
    assert rows["hq00000"]["status"] == "ok" and rows["hq00000"]["frame"] == "source"
    assert 0.0 <= rows["hq00000"]["gt_miou"] <= 1.0
    assert rows["hq00001"]["status"] == "ok" and rows["hq00001"]["gt_miou"] is None
    assert len(rows["hq00000"]["gt_iou"]) == len(sp.CLASSES) and rows["hq00001"]["gt_iou"] is None
    import json

    stats = json.loads((tmp_path / "out" / "stats" / "parsing" / "00000.json").read_text())
    extra = stats["extra"]  # the shard's mean IoU per class, next to the counts
    assert extra["gt_samples"] == 1 and set(extra["gt_iou_per_class"]) <= set(sp.CLASSES)
    assert extra["gt_mean_iou"] == pytest.approx(np.mean(list(extra["gt_iou_per_class"].values())), abs=1e-3)
