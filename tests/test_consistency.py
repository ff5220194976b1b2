"""The consistency stage: each check on synthetic annotations, then on a real lite run."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import consistency as schema
from stages.base import Result, Sample
from stages.consistency import Consistency, hull_iou, landmarks_in_box, pose_difference
from tests.conftest import make_casia_tree

LITE_STAGES = "detect,landmarks,pose,parsing,identity,expression,attributes"


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32))
    return buf.getvalue()


def _png(mask: np.ndarray) -> bytes:
    return cv2.imencode(".png", mask)[1].tobytes()


def _square_points(x0: float, y0: float, x1: float, y1: float, n: int = 20) -> np.ndarray:
    """Points on the border of a rectangle, (N, 3) with z = 0."""
    t = np.linspace(0, 1, n, endpoint=False)
    sides = [np.c_[x0 + (x1 - x0) * t, np.full(n, y0)], np.c_[np.full(n, x1), y0 + (y1 - y0) * t],
             np.c_[x1 - (x1 - x0) * t, np.full(n, y1)], np.c_[np.full(n, x0), y1 - (y1 - y0) * t]]
    xy = np.concatenate(sides)
    return np.c_[xy, np.zeros(len(xy))]


def _sample(upstream: dict[str, Result], frame: str = "aligned") -> Sample:
    return Sample(key="k", identity="i", image=None, frame=frame, upstream=upstream)


def _agreeing(frame: str = "aligned") -> dict[str, Result]:
    """Upstream results that agree: same pose, mask = hull, landmarks inside the box."""
    lmk = _square_points(100, 120, 400, 440)
    mask = np.zeros((512, 512), np.uint8)
    mask[120:441, 100:401] = 255
    # crop = 2 * source + 10: the source box (40, 50)-(210, 230) covers the crop square
    affine = [2.0, 0.0, 10.0, 0.0, 2.0, 10.0]
    return {
        "detect": Result(columns={"box": [40.0, 50.0, 210.0, 230.0], "affine": affine}),
        "landmarks": Result(columns={"yaw": 10.0, "pitch": -5.0, "roll": 2.0}, files={"lmk.npy": _npy(lmk)}),
        "pose": Result(columns={"yaw": 12.0, "pitch": -4.0, "roll": 1.0}),
        "expression": Result(columns={"yaw": 11.0, "pitch": -6.0, "roll": 2.0}),
        "parsing": Result(columns={}, files={"facemask.png": _png(mask)}),
        "identity": Result(columns={"restore_cosine": 0.9}),
    }


def test_pose_difference_wraps_and_needs_both():
    assert pose_difference({"yaw": 179, "pitch": 0, "roll": -179}, {"yaw": -179, "pitch": 3, "roll": 179}) == \
        pytest.approx((2 + 3 + 2) / 3)
    assert pose_difference({"yaw": 1, "pitch": 2, "roll": 3}, None) is None
    assert pose_difference({"yaw": 1, "pitch": None, "roll": 3}, {"yaw": 1, "pitch": 2, "roll": 3}) is None
    # rows of different frames are not comparable (the aligned crop removes roll)
    assert pose_difference({"yaw": 1, "pitch": 2, "roll": 3, "frame": "source"},
                           {"yaw": 1, "pitch": 2, "roll": 3, "frame": "aligned"}) is None


def test_hull_iou():
    mask = np.zeros((100, 100), np.uint8)
    mask[20:61, 20:61] = 255
    assert hull_iou(_square_points(20, 20, 60, 60), mask) == pytest.approx(1.0, abs=0.01)
    shifted = hull_iou(_square_points(40, 20, 80, 60), mask)
    assert 0.25 < shifted < 0.4
    assert hull_iou(_square_points(20, 20, 60, 60)[:2], mask) is None


def test_landmarks_in_box_maps_crop_back_to_source():
    lmk = _square_points(100, 120, 400, 440)
    det = {"box": [40.0, 50.0, 210.0, 230.0], "affine": [2.0, 0.0, 10.0, 0.0, 2.0, 10.0]}
    assert landmarks_in_box(lmk, det, "aligned", 0.0) == 1.0
    # read as source pixels the same points fall mostly outside the box
    assert landmarks_in_box(lmk, det, "source", 0.0) < 0.6
    src = _square_points(45, 55, 200, 220)
    assert landmarks_in_box(src, det, "source", 0.0) == 1.0
    assert landmarks_in_box(lmk, {"box": None}, "aligned", 0.1) is None
    assert landmarks_in_box(lmk, {"box": [0, 0, 1, 1]}, "aligned", 0.1) is None  # no affine


def test_agreeing_annotations_are_good():
    cols = Consistency().measure(_sample(_agreeing()))
    assert cols["quality"] == schema.GOOD and cols["quality_reasons"] == []
    assert cols["posenet_vs_pnp_deg"] == pytest.approx((2 + 1 + 1) / 3)
    assert cols["tddfa_vs_pnp_deg"] == pytest.approx((1 + 1 + 0) / 3)
    assert cols["tddfa_vs_posenet_deg"] == pytest.approx((1 + 2 + 1) / 3)
    assert cols["facemask_vs_hull_iou"] > 0.95
    assert cols["landmarks_in_box"] == 1.0
    assert cols["restore_cosine"] == pytest.approx(0.9)
    assert cols["random_stages"] == []
    assert set(cols) == set(schema.SCHEMA.names)
    pa.Table.from_pylist([cols], schema=schema.SCHEMA)  # the values fit the declared types


def test_each_check_flags_its_reason_and_two_make_bad():
    up = _agreeing()
    up["pose"] = Result(columns={"yaw": 60.0, "pitch": -5.0, "roll": 2.0})
    cols = Consistency().measure(_sample(up))
    assert cols["quality"] == schema.SUSPECT and cols["quality_reasons"] == [schema.POSE_DISAGREEMENT]
    up["identity"] = Result(columns={"restore_cosine": 0.2})
    cols = Consistency().measure(_sample(up))
    assert cols["quality"] == schema.BAD
    assert cols["quality_reasons"] == [schema.POSE_DISAGREEMENT, schema.IDENTITY_DRIFT]
    up = _agreeing()
    up["parsing"] = Result(files={"facemask.png": _png(np.zeros((512, 512), np.uint8))})
    up["detect"] = Result(columns={"box": [0.0, 0.0, 20.0, 20.0], "affine": [2.0, 0.0, 10.0, 0.0, 2.0, 10.0]})
    cols = Consistency().measure(_sample(up))
    assert cols["facemask_vs_hull_iou"] == 0.0 and cols["landmarks_in_box"] == 0.0
    assert cols["quality_reasons"] == [schema.MASK_MISMATCH, schema.LANDMARKS_OUTSIDE_BOX]
    assert Consistency(bad_at=3).measure(_sample(up))["quality"] == schema.SUSPECT


def test_random_weights_make_the_row_bad():
    up = _agreeing()
    up["parsing"].columns["weights_random"] = True
    cols = Consistency().measure(_sample(up))
    assert cols["random_stages"] == ["parsing"]
    assert cols["quality_reasons"] == [schema.RANDOM_WEIGHTS] and cols["quality"] == schema.BAD
    assert Consistency(random_is_bad=False).measure(_sample(up))["quality"] == schema.SUSPECT


def test_missing_inputs_give_nulls():
    cols = Consistency().measure(_sample({}))
    assert all(cols[c] is None for c in schema.CHECKS) and cols["quality"] is None
    assert cols["quality_reasons"] == []
    only_pose = {k: v for k, v in _agreeing().items() if k in ("pose", "landmarks")}
    cols = Consistency().measure(_sample(only_pose))
    assert cols["posenet_vs_pnp_deg"] is not None and cols["facemask_vs_hull_iou"] is None
    assert cols["landmarks_in_box"] is None and cols["quality"] == schema.GOOD


def test_restored_frame_keeps_the_geometry_restore_was_given():
    up = _agreeing()
    up["restore"] = Result(columns={"input_frame": "aligned"})
    assert Consistency().measure(_sample(up, "restored"))["landmarks_in_box"] == 1.0
    up["restore"] = Result(columns={"input_frame": "source"})  # then lmk are source pixels
    assert Consistency().measure(_sample(up, "restored"))["landmarks_in_box"] < 0.6


def test_check_rejects_bad_thresholds():
    for bad in ({"max_pose_diff_deg": 0}, {"min_mask_iou": 2}, {"box_margin": -1}, {"bad_at": 0}):
        with pytest.raises(ValueError):
            Consistency(**bad).check()
    Consistency().check()


def _run(tree: Path, out: Path, stages: str, *extra: str) -> None:
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--source", "casia-webface", "--input", str(tree),
           "--out", str(out), "--preset", "lite", "--executor", "local", "--shard-size", "4", "--stages", stages,
           "--set", "parsing.weights=random", "-q", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


_BUILT: dict[Path, Path] = {}


def build_lite_out(root: Path) -> Path:
    """One fused lite run (3 identities x 3 photos + broken files) with random parsing and
    consistency; built once per test session and shared with tests/test_inspect.py."""
    if root not in _BUILT:
        from tests.fixtures.odd import write_odd_files

        tree = make_casia_tree(root / "tree", 3, 3)
        write_odd_files(tree / "0009999")
        _run(tree, root / "out", f"{LITE_STAGES},consistency")
        _BUILT[root] = root / "out"
    return _BUILT[root]


@pytest.fixture(scope="session")
def lite_out(tmp_path_factory) -> Path:
    return build_lite_out(tmp_path_factory.getbasetemp() / "lite_out")


def _rows(out: Path, stage: str) -> list[dict]:
    return pq.read_table(out / "manifests" / stage).to_pylist()


@pytest.mark.slow
def test_consistency_on_a_real_run(lite_out):
    rows = _rows(lite_out, "consistency")
    plan = pq.read_table(lite_out / "plan" / "plan.parquet")
    assert sorted(r["key"] for r in rows) == sorted(plan["key"].to_pylist())  # every key, once
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 9
    for r in ok:
        assert r["posenet_vs_pnp_deg"] < 15 and r["tddfa_vs_pnp_deg"] < 15 and r["tddfa_vs_posenet_deg"] < 15
        assert r["landmarks_in_box"] > 0.9
        assert 0.0 <= r["facemask_vs_hull_iou"] < 0.6  # random parsing weights: no real agreement
        assert r["restore_cosine"] is None  # restore did not run
        assert schema.MASK_MISMATCH in r["quality_reasons"] and r["quality"] in schema.VERDICTS
    failed = [r for r in rows if r["status"] != "ok"]
    assert failed and all(r["error"].startswith("upstream_failed") for r in failed)
    with tarfile.open(lite_out / "shards" / "00000.tar") as tar:  # the first 4 keys: real photos
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert metas and all(m["consistency"]["quality"] in schema.VERDICTS for m in metas)


@pytest.mark.slow
def test_random_weights_seen_when_fused(lite_out):
    ok = [r for r in _rows(lite_out, "consistency") if r["status"] == "ok"]
    assert all(r["random_stages"] == ["parsing"] and r["quality"] == schema.BAD for r in ok)


@pytest.mark.slow
def test_random_weights_seen_when_read_from_disk(tmp_path):
    tree = make_casia_tree(tmp_path / "tree", 2, 2)
    out = tmp_path / "out"
    _run(tree, out, "detect,landmarks,parsing")
    _run(tree, out, "detect,landmarks,parsing,consistency")  # upstream rows come from the manifests
    ok = [r for r in _rows(out, "consistency") if r["status"] == "ok"]
    assert len(ok) == 4
    for r in ok:
        assert r["random_stages"] == ["parsing"] and r["quality"] == schema.BAD
        assert r["quality_reasons"][-1] == schema.RANDOM_WEIGHTS
        assert r["posenet_vs_pnp_deg"] is None and r["facemask_vs_hull_iou"] is not None
