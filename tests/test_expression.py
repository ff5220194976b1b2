"""The expression stage and its 3DDFA-V2 loader, on the bundled real weights and lfw10 photos."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from schemas import expression as xschema
from stages.models import align
from stages.base import ERROR, OK, SKIPPED, Result, Sample
from stages.expression import Expression, face_roi
from stages.geometry import wrap_degrees
from stages.models import common, registry, tddfa

SHARED = Path(__file__).resolve().parents[2] / "shared"
LFW = SHARED / "faces" / "lfw10"
PKL = SHARED / "weights" / "headpose" / "3ddfa_v2_param_mean_std_62d_120x120.pkl"
PTH = SHARED / "weights" / "headpose" / "3ddfa_v2_mb05_120x120.pth"
TURNED = LFW / "Donald_Rumsfeld" / "Donald_Rumsfeld_0005.jpg"  # nose towards image left
LOOKS_UP = LFW / "Donald_Rumsfeld" / "Donald_Rumsfeld_0001.jpg"  # chin raised
FRONTAL = LFW / "George_W_Bush" / "George_W_Bush_0001.jpg"

needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason=f"real face photos not found at {LFW}")


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def angles(results: list[Result]) -> np.ndarray:
    return np.array([[r.columns[k] for k in ("yaw", "pitch", "roll")] for r in results])


@pytest.fixture(scope="module")
def stage() -> Expression:
    s = Expression(device="cpu")
    s.check()
    s.setup()
    return s


@pytest.fixture(scope="module")
def lfw_photos() -> list[np.ndarray]:
    if not LFW.is_dir():
        pytest.skip(f"real face photos not found at {LFW}")
    return [rgb(p) for p in sorted(LFW.glob("*/*.jpg"))]


def test_bundled_files_verify():
    for name in (tddfa.WEIGHTS, tddfa.MEAN_STD):
        spec = registry.get(name)
        assert spec.bundled and registry.resolve(name).parent == registry.BUNDLED_DIR
    assert registry.get(tddfa.MEAN_STD).extra["converted_from_sha256"] == (
        "090d7150f77cb66c29ddae21e4508fbde59123dcd1dea7facc24a7ed06d1c795")


@pytest.mark.skipif(not PKL.is_file(), reason=f"upstream pickle not found at {PKL}")
def test_npz_equals_upstream_pickle():
    assert registry.sha256_of(PKL) == registry.get(tddfa.MEAN_STD).extra["converted_from_sha256"]
    with open(PKL, "rb") as f:  # the test alone unpickles: a known file, checksum verified above
        ref = pickle.load(f)
    mean, std = tddfa.load_mean_std()
    np.testing.assert_array_equal(mean, np.asarray(ref["mean"], np.float32))
    np.testing.assert_array_equal(std, np.asarray(ref["std"], np.float32))


def test_strict_load_matches_checkpoint_keys():
    state = registry.load_state_dict(tddfa.WEIGHTS)
    assert all(k.startswith("module.") for k in state)
    model = tddfa.load_tddfa()
    assert {k.removeprefix("module.") for k in state} == set(model.state_dict())
    assert float(model.param_std.max()) > 1e5  # mean/std attached, not the random-init identity
    broken = dict(state)
    broken.pop("module.fc_lm.bias")
    with pytest.raises(ValueError, match="missing"):
        common.load_into(tddfa.TDDFAMobileNet(), broken)
    if PTH.is_file():
        assert registry.sha256_of(PTH) == registry.get(tddfa.WEIGHTS).sha256


@needs_lfw
def test_yaw_flips_on_mirrored_lfw10(stage, lfw_photos):
    res = stage.process([Sample(key=f"k{i}", identity="x", image=im) for i, im in enumerate(lfw_photos)])
    mir = stage.process([Sample(key=f"m{i}", identity="x", image=im[:, ::-1].copy())
                         for i, im in enumerate(lfw_photos)])
    assert all(r.status == OK for r in res + mir)
    a, m = angles(res), angles(mir)
    turned = np.abs(a[:, 0]) > 5
    flipped = np.sign(a[turned, 0]) != np.sign(m[turned, 0])
    assert turned.sum() >= 50 and flipped.mean() >= 0.95  # measured: 78/78
    assert np.corrcoef(a[:, 0], -m[:, 0])[0, 1] > 0.97  # measured: 0.992
    assert np.corrcoef(a[:, 2], -m[:, 2])[0, 1] > 0.9  # roll flips too
    assert np.abs(a[:, 1] - m[:, 1]).mean() < 4.0  # pitch does not (measured 1.8 deg)
    for r in res:
        expr = np.load(io.BytesIO(r.files[xschema.EXPR_FILE]), allow_pickle=False)
        assert expr.dtype == np.float32 and expr.shape == (10,) and np.all(np.isfinite(expr))
        np.testing.assert_array_equal(expr, np.float32(r.columns["expression"]))
        assert len(r.columns["shape"]) == 40 and len(r.columns["params"]) == 62
        assert r.columns["roi_source"] == "centre"
    table = pa.Table.from_pylist([r.columns for r in res], schema=xschema.SCHEMA)
    assert table.num_rows == len(res)


@needs_lfw
def test_sign_convention_on_real_photos(stage):
    turned, up = stage.process([Sample(key="a", identity="x", image=rgb(TURNED)),
                                Sample(key="b", identity="x", image=rgb(LOOKS_UP))])
    assert turned.columns["yaw"] > 20  # face turned towards image left
    assert up.columns["pitch"] > 5  # chin raised
    img = rgb(FRONTAL)
    rolls = []
    for deg in (-15, 0, 15):  # cv2: positive = counter-clockwise on screen
        m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), deg, 1.0)
        rot = cv2.warpAffine(img, m, img.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
        (r,) = stage.process([Sample(key="r", identity="x", image=rot)])
        rolls.append(r.columns["roll"])
    assert rolls[0] - rolls[1] > 8 and rolls[1] - rolls[2] > 8  # clockwise = positive roll


@needs_lfw
def test_roi_sources_agree(stage):
    """Aligned crop (points5_crop or template), source box and source points give one pose."""
    img = rgb(FRONTAL)
    # RetinaFace mobile0.25 on this photo: box and five points, source px
    box = [83.1, 66.7, 175.0, 190.7]
    points = np.array([[103.8, 115.8], [144.9, 117.5], [118.1, 135.9], [104.1, 159.4], [137.8, 160.7]])
    crop, matrix = align.align(img, points, align.ffhq_template(512), 512)
    crop_points = align.transform_points(points, matrix).ravel().tolist()
    runs = {
        "points5_crop": Sample(key="a", identity="x", image=crop, frame="aligned",
                               upstream={"detect": Result(columns={"points5_crop": crop_points})}),
        "template": Sample(key="t", identity="x", image=crop, frame="aligned",
                           upstream={"detect": Result(columns={})}),
        "box": Sample(key="b", identity="x", image=img, upstream={"detect": Result(columns={"box": box})}),
        "points5": Sample(key="p", identity="x", image=img,
                          upstream={"detect": Result(columns={"points5": points.ravel().tolist()})}),
        "centre": Sample(key="c", identity="x", image=img),
    }
    out = dict(zip(runs, stage.process(list(runs.values()))))
    for source, r in out.items():
        assert r.status == OK and r.columns["roi_source"] == source
    ref = np.array([out["box"].columns[k] for k in ("yaw", "pitch")])
    for source in ("points5_crop", "template", "points5", "centre"):
        got = np.array([out[source].columns[k] for k in ("yaw", "pitch")])
        assert np.abs(got - ref).max() < 6.0, source
    # the points ROI reproduces 3DDFA-V2's box ROI within a few percent
    bx, by, bs = tddfa.roi_from_box(box)
    px, py, ps = tddfa.roi_from_points(points)
    assert abs(ps / bs - 1) < 0.1 and np.hypot(px - bx, py - by) < 0.08 * bs


def test_agreement_columns_and_wrap(stage):
    img = np.full((120, 120, 3), 128, np.uint8)
    up = {"landmarks": Result(columns={"yaw": 179.0, "pitch": 0.0, "roll": None}),
          "pose": Result(columns={"yaw": 1.0, "pitch": 2.0, "roll": 3.0})}
    (r,) = stage.process([Sample(key="k", identity="x", image=img, upstream=up)])
    assert r.columns["diff_to_landmarks_deg"] is None  # a missing angle: no comparison
    expected = np.mean([abs(wrap_degrees(r.columns[k] - v)) for k, v in zip(("yaw", "pitch", "roll"), (1, 2, 3))])
    assert r.columns["diff_to_posenet_deg"] == pytest.approx(expected)
    assert abs(wrap_degrees(179.0 - -179.0)) == pytest.approx(2.0)


def test_bad_inputs_become_results(stage):
    batch = [Sample(key="none", identity="x", image=None),
             Sample(key="gray", identity="x", image=np.zeros((64, 64), np.uint8)),
             Sample(key="tiny", identity="x", image=np.zeros((12, 12, 3), np.uint8))]
    none, gray, tiny = stage.process(batch)
    assert (none.status, none.error) == (ERROR, "bad_image")
    assert (gray.status, gray.error) == (ERROR, "bad_image")
    assert (tiny.status, tiny.error) == (SKIPPED, "face_too_small")


def test_config_checks():
    with pytest.raises(ValueError):
        Expression(device="tpu").check()
    with pytest.raises(ValueError):
        Expression(no_detect_roi=5.0).check()
    with pytest.raises(KeyError):
        Expression(model="no_such_model").check()


def test_random_weights():
    s = Expression(device="cpu", weights="random", batch_size=2)
    s.check()
    s.setup()
    assert s.provenance().weights_random and s.provenance().weights_sha256 == ""
    img = np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8)
    out = s.process([Sample(key=str(i), identity="x", image=img) for i in range(3)])
    assert [r.status for r in out] == [OK] * 3  # batch of 3 in chunks of 2


@needs_lfw
def test_bf16_autocast_matches_fp32(stage):
    prov = stage.provenance()
    assert not prov.weights_random and prov.weights_sha256 == registry.get(tddfa.WEIGHTS).sha256
    low = Expression(device="cpu", dtype="bf16")
    low.setup()
    sample = Sample(key="k", identity="x", image=rgb(TURNED))
    (a,), (b,) = stage.process([sample]), low.process([sample])
    for k in ("yaw", "pitch", "roll"):  # measured on lfw10: 0.07 deg mean difference
        assert abs(a.columns[k] - b.columns[k]) < 1.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_lfw
def test_cuda_half_precision_matches_cpu(stage, lfw_photos):
    batch = [Sample(key=f"k{i}", identity="x", image=im) for i, im in enumerate(lfw_photos[:32])]
    ref = angles(stage.process(batch))
    for dtype in ("fp16", "bf16"):
        gpu = Expression(device="cuda", dtype=dtype, batch_size=16)
        gpu.setup()
        assert np.abs(angles(gpu.process(batch)) - ref).mean() < 1.0
