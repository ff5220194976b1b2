"""detect stage on real photos with the bundled RetinaFace MobileNet0.25."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

import schemas.detect
from stages.models import align
from stages.base import OK, SKIPPED, Sample
from stages.detect import Detect
from stages.models import registry
from stages.models.registry import MissingWeights

SHARED = Path(__file__).resolve().parents[2] / "shared"
FACES = SHARED / "faces"
LFW = FACES / "lfw10"
MULTI = {
    "face_recognition/test/obama_and_biden.jpg": 2,
    "face_recognition/extra/two_people.jpg": 2,
    "facenet_pytorch/multiface.jpg": 4,
}
# LFW photos showing other people in the background; every other photo has exactly one face
BACKGROUND_FACES = {
    "Ariel_Sharon_0004", "Ariel_Sharon_0009", "Arnold_Schwarzenegger_0004",
    "Arnold_Schwarzenegger_0005", "Arnold_Schwarzenegger_0007", "Colin_Powell_0010",
    "George_W_Bush_0009", "Gerhard_Schroeder_0004", "Hugo_Chavez_0007", "Tony_Blair_0001",
    "Vladimir_Putin_0001", "Vladimir_Putin_0005", "Vladimir_Putin_0007",
}


def read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        pytest.skip(f"missing test photo {path}")
    return np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])


def lfw_samples() -> list[Sample]:
    paths = sorted(LFW.glob("*/*.jpg"))
    if len(paths) != 100:
        pytest.skip(f"lfw10 photos not found under {LFW}")
    return [Sample(key=p.stem, identity=p.parent.name, image=read_rgb(p)) for p in paths]


@pytest.fixture(scope="module")
def stage() -> Detect:
    stage = Detect(model="retinaface_mobile0.25", device="cpu")
    stage.check()
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def lfw(stage):
    samples = lfw_samples()
    return samples, stage.process(samples)


def eye_error(result) -> float:
    crop_points = np.asarray(result.columns["points5_crop"]).reshape(5, 2)
    return float(np.abs(crop_points[:2] - align.ffhq_template(512)[:2]).max())


def test_one_central_face_per_lfw_photo(lfw):
    samples, results = lfw
    failed = [(s.key, r.error) for s, r in zip(samples, results) if r.status != OK]
    assert not failed, failed
    for sample, result in zip(samples, results):
        x1, y1, x2, y2 = result.columns["box"]
        assert abs((x1 + x2) / 2 - 125) < 30 and abs((y1 + y2) / 2 - 125) < 35, sample.key
        assert result.columns["n_faces"] >= 1 and result.columns["score"] >= 0.8
        if sample.key not in BACKGROUND_FACES:
            assert result.columns["n_faces"] == 1, sample.key
    assert next(r for s, r in zip(samples, results) if s.key == "Vladimir_Putin_0007").columns["n_faces"] >= 3


def test_aligned_crop_matches_template(lfw):
    samples, results = lfw
    errors = []
    for result in results:
        assert result.frame.shape == (512, 512, 3) and result.frame.dtype == np.uint8
        matrix = np.asarray(result.columns["affine"]).reshape(2, 3)
        mapped = align.transform_points(result.columns["points5"], matrix)
        assert np.allclose(mapped.ravel(), result.columns["points5_crop"], atol=0.05)
        errors.append(eye_error(result))
    assert np.median(errors) < 8 and max(errors) < 40


def test_columns_fit_schema(lfw):
    _, results = lfw
    table = pa.Table.from_pylist([r.columns for r in results], schema=schemas.detect.SCHEMA)
    assert table.num_rows == 100
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["box"]) == 4 and len(row["points5"]) == 10 and len(row["affine"]) == 6


def test_multi_face_photos(stage):
    for rel, at_least in MULTI.items():
        image = read_rgb(FACES / rel)
        result = stage.process([Sample(key="k", identity="i", image=image)])[0]
        assert result.status == OK and result.columns["n_faces"] >= at_least, rel
        assert eye_error(result) < 20, rel


def box_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def test_mirrored_photo(stage, lfw):
    samples, results = lfw
    mirrored = [Sample(key=s.key, identity="x", image=s.image[:, ::-1].copy()) for s in samples]
    for original, flipped in zip(results, stage.process(mirrored)):
        assert flipped.status == OK
        x1, y1, x2, y2 = original.columns["box"]
        assert box_iou(flipped.columns["box"], [250 - x2, y1, 250 - x1, y2]) > 0.8
        # the mirror's image-left eye is the original's image-right eye
        p = np.asarray(original.columns["points5"]).reshape(5, 2)
        q = np.asarray(flipped.columns["points5"]).reshape(5, 2)[[1, 0, 2, 4, 3]]
        q[:, 0] = 250 - q[:, 0]
        assert np.hypot(*(p - q).T).max() < 0.12 * (x2 - x1)
        assert eye_error(flipped) < 40


def test_skips_with_reasons(stage, lfw):
    samples, _ = lfw
    blank = np.full((200, 200, 3), 128, np.uint8)
    small = Detect(model="retinaface_mobile0.25", device="cpu", min_face_size=200)
    small.setup()
    out = stage.process([Sample("a", "i", blank), Sample("b", "i", np.zeros((5, 5), np.uint8))])
    assert (out[0].status, out[0].error) == (SKIPPED, "no_face")
    assert out[1].error == "bad_image"
    tiny = small.process([samples[0]])[0]
    assert tiny.status == SKIPPED and tiny.error.startswith("face_too_small")


def test_mixed_sizes_and_batches_match_single(stage, lfw):
    samples, results = lfw
    big = read_rgb(FACES / "face_recognition/extra/two_people.jpg")
    batch = [samples[3], Sample("big", "i", big), samples[5], samples[8]]
    chunked = Detect(model="retinaface_mobile0.25", device="cpu", batch_size=3)
    chunked.setup()
    out = chunked.process(batch)
    single = stage.process([batch[1]])[0]
    assert np.allclose(out[1].columns["box"], single.columns["box"], atol=1)
    for i, j in ((0, 3), (2, 5), (3, 8)):
        assert np.allclose(out[i].columns["points5"], results[j].columns["points5"], atol=1.5)


def test_bf16_close_to_fp32(lfw):
    samples, results = lfw
    stage = Detect(model="retinaface_mobile0.25", device="cpu", dtype="bf16")
    stage.setup()
    out = stage.process(samples[:4])
    for a, b in zip(out, results[:4]):
        assert a.status == OK and np.allclose(a.columns["points5"], b.columns["points5"], atol=6)


def test_resnet50_random_weights_runs_same_code(tmp_path, monkeypatch, lfw):
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path))
    with pytest.raises(MissingWeights, match="detection_Resnet50_Final.pth"):
        Detect().check()
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(MissingWeights, match=str(elsewhere / "detection_Resnet50_Final.pth")):
        Detect(weights_dir=str(elsewhere)).check()
    stage = Detect(model="retinaface_resnet50", weights="random", device="cpu")
    stage.check()
    prov = stage.provenance()
    assert prov.weights_random and prov.model == "retinaface_resnet50" and prov.weights_sha256 == ""
    samples, _ = lfw
    out = stage.process(samples[:2])
    assert len(out) == 2 and all(r.status in (OK, SKIPPED) for r in out)


def test_bad_config_raises():
    for bad in (dict(select="first"), dict(weights="imagenet"), dict(dtype="int8"),
                dict(conf_threshold=1.5), dict(model="mobilefacenet"), dict(device="tpu")):
        with pytest.raises((ValueError, KeyError)):
            Detect(model=bad.pop("model", "retinaface_mobile0.25"), **bad).check()


def test_provenance_of_bundled_weights(stage):
    prov = stage.provenance()
    assert prov.weights == "detection_mobilenet0.25_Final.pth" and not prov.weights_random
    assert prov.weights_sha256 == registry.sha256_of(registry.resolve("retinaface_mobile0.25"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_cuda_matches_cpu(lfw, dtype):
    samples, results = lfw
    stage = Detect(model="retinaface_mobile0.25", device="cuda", dtype=dtype, batch_size=16)
    stage.check()
    out = stage.process(samples)
    for a, b in zip(out, results):
        assert a.status == OK and np.allclose(a.columns["points5"], b.columns["points5"], atol=6)


def test_own_nms_matches_torchvision(monkeypatch):
    """retinaface.nms without torchvision loaded (the driver's case) keeps exactly what
    torchvision.ops.nms keeps."""
    import sys

    import torch
    import torchvision

    from stages.models import retinaface

    g = torch.Generator().manual_seed(0)
    cases = []
    for trial in range(200):
        n = int(torch.randint(0, 300, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 500
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 120 + 1], 1)
        cases.append((boxes, torch.rand(n, generator=g), (0.3, 0.4, 0.5)[trial % 3]))
    want = [torchvision.ops.nms(*c) for c in cases]
    monkeypatch.delitem(sys.modules, "torchvision")
    for case, expected in zip(cases, want):
        assert torch.equal(retinaface.nms(*case), expected)


@pytest.mark.parametrize("network", ["mobile0.25", "resnet50"])
def test_own_retinaface_net_matches_facexlib(network):
    """Our RetinaFaceNet has facexlib's parameter names and shapes and gives its outputs: the
    bundled mobile0.25 checkpoint on both; resnet50 (no offline weights) with one random state."""
    import warnings

    from facexlib.detection.retinaface import RetinaFace

    from stages.models.retinaface_net import RetinaFaceNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # facexlib's resnet50(pretrained=False)
        ref = RetinaFace(network_name=network, half=False, phase="test", device="cpu")
    ours = RetinaFaceNet(network)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    state = registry.load_state_dict("retinaface_mobile0.25") if network == "mobile0.25" else ref.state_dict()
    ref.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(0)) * 60
    with torch.inference_mode():
        for a, b in zip(ours(x), ref(x)):
            assert a.shape == b.shape and torch.equal(a, b)


def test_a_worker_detecting_faces_imports_neither_facexlib_nor_torchvision():
    """The lite preset's detector builds and runs without importing facexlib or torchvision (their
    imports cost a worker seconds: torchvision.models pulls in torch._dynamo)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from stages.models import retinaface; "
            "net = retinaface.load_retinaface('retinaface_mobile0.25'); "
            "retinaface.detect(net, [np.zeros((64, 64, 3), np.uint8)], 'cpu', 'fp32'); "
            "print(sorted(m for m in ('facexlib', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_torchvision_built_for_another_torch_is_named_with_the_fix(monkeypatch):
    """The pip trap of a CPU torch beside a CUDA torchvision wheel: one line that says what to do."""
    import importlib

    import pytest

    from stages.models import common

    def broken(name, *a, **k):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(RuntimeError, match=r"torchvision .* was built for another torch than torch .*install both "
                                           r"from one index"):
        common.facexlib("facexlib.detection.retinaface", "RetinaFace")
