"""The quality stage: sharpness, tone, exposure, JPEG quality, detect-based sizes, skips, FIQA slot."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import schemas.quality as qs
from pipeline.core.manifest import validate_columns
from schemas.common import manifest_schema
from stages.base import ERROR, OK, SKIPPED, Result, Sample
from stages.models import fiqa, registry
from stages.quality import Quality, jpeg_quality_by_recompression, jpeg_quality_from_bytes

LFW = Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw10"
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, bytes, np.ndarray]]:
    if not LFW.is_dir():
        pytest.skip(f"real faces missing: {LFW}")
    out = []
    for path in sorted(LFW.glob("*/*.jpg")):
        data = path.read_bytes()
        out.append((path.stem, data, np.array(Image.open(io.BytesIO(data)).convert("RGB"))))
    return out


def sample(img: np.ndarray, key: str = "k", **kw) -> Sample:
    return Sample(key=key, identity="x", image=img, **kw)


def detect_row(points: list[float], box: list[float], n_faces: int = 1) -> Result:
    return Result(columns={"points5": points, "box": box, "n_faces": n_faces})


def test_blurred_copies_are_less_sharp(photos):
    stage = Quality()
    originals = stage.process([sample(img, name) for name, _, img in photos])
    blurred = stage.process([sample(cv2.GaussianBlur(img, (0, 0), 1.5), name) for name, _, img in photos])
    for (name, _, _), a, b in zip(photos, originals, blurred):
        assert a.status == b.status == OK, name
        assert b.columns["sharpness"] < a.columns["sharpness"], name


def test_tone_of_originals_grayscale_and_sepia_copies(photos):
    stage = Quality()
    for name, _, img in photos:
        gray = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        sepia = np.clip(img.astype(np.float32) @ SEPIA.T, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(sepia).save(buf, "JPEG", quality=70)
        sepia_jpeg = np.array(Image.open(buf).convert("RGB"))
        tones = [r.columns["tone"] for r in stage.process([sample(x) for x in (img, gray, sepia, sepia_jpeg)])]
        assert tones == ["color", "grayscale", "sepia", "sepia"], name


def test_monochrome_skip_only_when_asked(photos):
    gray = np.repeat(cv2.cvtColor(photos[0][2], cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    assert Quality().process([sample(gray)])[0].status == OK
    (res,) = Quality(skip_monochrome=True).process([sample(gray)])
    assert (res.status, res.error) == (SKIPPED, "monochrome: grayscale")


def test_jpeg_quality_from_tables_and_recompression(photos):
    name, data, img = photos[0]
    assert jpeg_quality_from_bytes(data) == jpeg_quality_by_recompression(img) == 90  # LFW is saved at 90
    for q in (40, 75):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=q)
        decoded = np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert jpeg_quality_from_bytes(buf.getvalue()) == q
        assert jpeg_quality_by_recompression(decoded) == q
    resized = cv2.resize(img, (200, 200), interpolation=cv2.INTER_AREA)  # the 8x8 grid is gone
    assert jpeg_quality_by_recompression(resized) is None
    png = io.BytesIO()
    Image.fromarray(img).save(png, "PNG")
    assert jpeg_quality_from_bytes(png.getvalue()) is None and jpeg_quality_from_bytes(b"junk") is None


def test_jpeg_columns_by_frame_and_meta(photos):
    _, data, img = photos[0]
    source, aligned, with_bytes, png = Quality().process([
        sample(img, meta={"format": "JPEG"}), sample(img, frame="aligned"),
        sample(img, frame="aligned", meta={"source_bytes": data}), sample(img, meta={"format": "PNG"})])
    assert (source.columns["jpeg_quality"], source.columns["jpeg_quality_method"]) == (90, "recompress")
    assert aligned.columns["jpeg_quality"] is None and aligned.columns["jpeg_quality_method"] is None
    assert (with_bytes.columns["jpeg_quality"], with_bytes.columns["jpeg_quality_method"]) == (90, "dqt")
    assert png.columns["jpeg_quality"] is None


def test_detect_columns_and_tiny_faces_skip(photos):
    img = photos[0][2]
    big = detect_row([90.0, 110.0, 150.0, 110.0, 120.0, 140.0, 95.0, 165.0, 145.0, 165.0], [70, 60, 180, 200], 3)
    tiny = detect_row([120.0, 120.0, 125.0, 120.0, 122.0, 123.0, 120.0, 126.0, 125.0, 126.0], [115, 112, 130, 130])
    meta = {"width": 250, "height": 250, "format": "JPEG"}
    ok, small, crowded = Quality(max_faces=2).process([
        sample(img, "a", upstream={"detect": detect_row(big.columns["points5"], big.columns["box"], 1)}, meta=meta),
        sample(img, "b", upstream={"detect": tiny}, meta=meta),
        sample(img, "c", upstream={"detect": big}, meta=meta)])
    assert ok.status == OK
    assert ok.columns["interocular_px"] == pytest.approx(60.0)
    assert ok.columns["face_area_ratio"] == pytest.approx(110 * 140 / 250 ** 2)
    assert ok.columns["n_faces"] == 1
    assert small.status == SKIPPED and small.error == "face_too_small: interocular 5.0 px < 8"
    assert crowded.status == SKIPPED and crowded.error == "too_many_faces: 3 > 2"
    (blurry,) = Quality(min_sharpness=1e6).process([sample(img)])
    assert blurry.status == SKIPPED and blurry.error.startswith("blurry: sharpness ")


def test_columns_validate_and_bad_input(photos):
    stage = Quality()
    stage.check()
    batch = [sample(photos[1][2], "a"), sample(None, "b"), sample(np.zeros((8, 8, 3), np.uint8), "c")]
    results = stage.process(batch)
    assert [r.status for r in results] == [OK, ERROR, SKIPPED]
    c = results[0].columns
    assert 0 <= c["luma_p5"] <= c["luma_p50"] <= c["luma_p95"] <= 255
    assert 0 <= c["clipped_low"] <= 1 and 0 <= c["clipped_high"] <= 1
    assert "fiqa_score" not in c
    prov = stage.provenance()
    rows = []
    for s, r in zip(batch, results):
        row = {n: None for n in stage.schema.names}
        row.update(r.columns if r.status == OK else {})
        row.update(key=s.key, status=r.status, error=r.error, duration_s=0.0, stage="quality", stage_version="1",
                   frame=s.frame, model=prov.model, weights_sha256=prov.weights_sha256,
                   weights_random=prov.weights_random, config_hash="x")
        rows.append(row)
    assert validate_columns(rows, manifest_schema(qs.SCHEMA)).num_rows == 3


def test_config_checks(tmp_path, monkeypatch):
    for bad in (dict(min_sharpness=-1), dict(max_faces=-1), dict(gray_chroma=300), dict(min_fiqa=0.5),
                dict(fiqa_model="arcface_irse50")):
        with pytest.raises(ValueError):
            Quality(**bad).check()
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path))
    with pytest.raises(registry.MissingWeights, match="CR-FIQA"):
        Quality(fiqa_model=fiqa.CR_FIQA_L).check()
    with pytest.raises(registry.MissingWeights, match="opencv_zoo"):
        Quality(fiqa_model=fiqa.EDIFFIQA_T).check()
    (tmp_path / registry.get(fiqa.CR_FIQA_L).filename).write_bytes(b"x")
    with pytest.raises(registry.UnverifiedWeights):
        Quality(fiqa_model=fiqa.CR_FIQA_L).check()
    with pytest.raises(ValueError, match="ONNX"):
        fiqa.load_fiqa(fiqa.EDIFFIQA_T, random_init=True)


def test_random_fiqa_model_scores_aligned_faces(photos, monkeypatch):
    spec = registry.get(fiqa.CR_FIQA_S)
    monkeypatch.setitem(registry.REGISTRY, fiqa.CR_FIQA_S,
                        dataclasses.replace(spec, extra={**spec.extra, "arch": "iresnet_tiny"}))
    stage = Quality(fiqa_model=fiqa.CR_FIQA_S, weights="random", min_fiqa=-1e9)
    stage.check()
    points = [90.0, 110.0, 150.0, 110.0, 120.0, 140.0, 95.0, 165.0, 145.0, 165.0]
    det = detect_row(points, [70, 60, 180, 200])
    with_det, without = stage.process([sample(photos[0][2], "a", upstream={"detect": det}),
                                       sample(photos[0][2], "b")])
    assert with_det.status == OK and np.isfinite(with_det.columns["fiqa_score"])
    assert with_det.columns["fiqa_model"] == fiqa.CR_FIQA_S
    assert without.status == OK and "fiqa_score" not in without.columns  # no points: not scored
    assert stage.provenance().weights_random
    net = fiqa.QualityIResNet(fiqa.LAYERS["iresnet_tiny"]).eval()
    assert net(fiqa.preprocess(np.zeros((2, 112, 112, 3), np.uint8))).shape == (2,)


def test_fiqa_weights_come_from_the_weights_dir(tmp_path):
    """--weights-dir reaches the FIQA model (it used to be looked up in the default folder only)."""
    from stages.models.registry import MissingWeights
    from stages.quality import Quality

    with pytest.raises(MissingWeights) as info:
        Quality(fiqa_model="cr_fiqa_s", weights_dir=str(tmp_path)).check()
    assert info.value.path.parent == tmp_path


def test_jpeg_quality_search_matches_the_one_by_one_search():
    """The vectorised search over the 100 IJG tables picks what a loop over them picks (ties too)."""
    from stages import jpeg

    def one_by_one(table):
        return min(range(1, 101), key=lambda q: np.abs(jpeg.ijg_table(q) - table).sum())

    rng = np.random.default_rng(0)
    tables = [jpeg.ijg_table(q) for q in range(1, 101)] + [rng.integers(1, 256, 64).astype(float) for _ in range(300)]
    for table in tables:
        assert int(np.abs(jpeg._ijg_tables() - table).sum(axis=1).argmin()) + 1 == one_by_one(table)
    for q in (35, 75, 95):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=q)
        assert jpeg.jpeg_quality_from_bytes(buf.getvalue()) == q
