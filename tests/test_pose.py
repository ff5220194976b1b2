"""pose stage: the real lightweight head-pose net on real faces, Hopenet layouts, pose images."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

import schemas.pose
from schemas.common import manifest_schema
from stages import drawing
from stages.base import Result, Sample
from stages.models import hopenet, registry
from stages.pose import Pose

SHARED = Path(__file__).resolve().parents[2] / "shared"
LFW = SHARED / "faces" / "lfw10"
LFW_CROP = 0.64  # LFW photos are 250 px with the face in the middle ~160 px


def lfw_photo(name: str, n: int = 1) -> np.ndarray:
    path = LFW / name / f"{name}_{n:04d}.jpg"
    if not path.is_file():
        pytest.skip(f"real face photo missing: {path}")
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def lfw_photos(per_person: int = 2) -> list[np.ndarray]:
    if not LFW.is_dir():
        pytest.skip(f"real faces missing: {LFW}")
    paths = [p for d in sorted(LFW.iterdir()) if d.is_dir() for p in sorted(d.glob("*.jpg"))[:per_person]]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def light() -> Pose:
    stage = Pose(model="lightweight_headpose", crop=LFW_CROP, device="cpu")
    stage.check()
    stage.setup()
    return stage


def run(stage: Pose, images: list[np.ndarray], **kw) -> list[Result]:
    return stage.process([Sample(key=f"k{i}", identity="x", image=im, **kw) for i, im in enumerate(images)])


def test_lightweight_yaw_flips_on_mirrored_real_faces(light):
    images = lfw_photos()
    plain = run(light, images)
    mirror = run(light, [np.ascontiguousarray(im[:, ::-1]) for im in images])
    turned = [(a.columns, b.columns) for a, b in zip(plain, mirror) if abs(a.columns["yaw"]) > 5]
    assert len(turned) >= 8
    for a, b in turned:
        assert np.sign(a["yaw"]) == -np.sign(b["yaw"])
        assert abs(a["yaw"] + b["yaw"]) < 0.5 * abs(a["yaw"]) + 3
    pitch = np.array([[a["pitch"], b["pitch"]] for a, b in turned])
    assert np.abs(pitch[:, 0] - pitch[:, 1]).mean() < 5  # mirroring keeps pitch


def test_sign_convention_on_known_photos(light):
    # Schwarzenegger_0001 looks towards the image's right; Rumsfeld_0001 looks up
    arnold, rumsfeld = run(light, [lfw_photo("Arnold_Schwarzenegger"), lfw_photo("Donald_Rumsfeld")])
    assert arnold.columns["yaw"] < -15
    assert rumsfeld.columns["pitch"] > 8


def test_roll_follows_clockwise_rotation(light):
    face = lfw_photo("George_W_Bush")
    centre = (face.shape[1] / 2, face.shape[0] / 2)
    # cv2 angles are counter-clockwise: -20 turns the face 20 degrees clockwise on screen
    turned = cv2.warpAffine(face, cv2.getRotationMatrix2D(centre, -20, 1.0), face.shape[1::-1],
                            borderMode=cv2.BORDER_REFLECT)
    before, after = run(light, [face, turned])
    assert 10 < after.columns["roll"] - before.columns["roll"] < 30


def test_pose_image_and_columns(light):
    face = lfw_photo("Colin_Powell")
    res, = run(light, [face])
    assert res.status == "ok"
    img = decode_png(res.files[schemas.pose.POSE_IMAGE])
    assert img.shape == face.shape and img.dtype == np.uint8
    assert (img > 0).any() and (img == 0).mean() > 0.9
    assert res.columns["pnp_diff_yaw"] is None
    table = pa.Table.from_pylist([res.columns], schema=schemas.pose.SCHEMA)
    assert table.num_rows == 1
    manifest_schema(schemas.pose.SCHEMA)


def test_pnp_diff_and_face_centre_from_upstream(light):
    face = cv2.resize(lfw_photo("Tony_Blair"), (512, 512))
    landmarks = Result(columns={"yaw": 10.0, "pitch": 0.0, "roll": -5.0})
    points = [300.0, 300.0] * 5  # a face centre off the image centre
    detect = Result(columns={"points5_crop": points})
    res, = run(light, [face], frame="aligned", upstream={"landmarks": landmarks, "detect": detect})
    assert res.columns["pnp_diff_yaw"] == pytest.approx(res.columns["yaw"] - 10.0, abs=1e-4)
    assert res.columns["pnp_diff_roll"] == pytest.approx(res.columns["roll"] + 5.0, abs=1e-4)
    img = decode_png(res.files[schemas.pose.POSE_IMAGE])
    assert img[300, 300].any() and not img[256, 256].any()


def test_bad_image_is_an_error_row(light):
    bad, good = run(light, [np.zeros((4, 4), np.uint8), lfw_photo("Hugo_Chavez")])
    assert (bad.status, bad.error) == ("error", "bad_image")
    assert good.status == "ok"


def test_axes_follow_the_documented_convention():
    origin = (100.0, 100.0)
    tips = drawing.axis_tips(0, 0, 0, origin, 50)
    assert tips[0] == pytest.approx((150, 100)) and tips[1] == pytest.approx((100, 150))
    assert tips[2] == pytest.approx(origin)  # z points at the camera
    assert drawing.axis_tips(30, 0, 0, origin, 50)[2][0] < 90  # yaw > 0: nose to the image's left
    assert drawing.axis_tips(0, 30, 0, origin, 50)[2][1] < 90  # pitch > 0: up
    assert drawing.axis_tips(0, 0, 30, origin, 50)[0][1] > 110  # roll > 0: clockwise
    img = drawing.draw_pose_axes(120, 200, 0, 0, 0)
    assert img.shape == (120, 200, 3) and img[60, 120, 0] == 255  # red axis right of centre


def test_hopenet_r50_random_weights_through_stage():
    stage = Pose(model="hopenet_r50", weights="random", device="cpu", batch_size=2)
    stage.check()
    face = lfw_photo("Jacques_Chirac")
    results = stage.process([Sample(key=f"k{i}", identity="x", image=face) for i in range(3)])
    assert [r.status for r in results] == ["ok"] * 3
    assert all(-99 <= r.columns["yaw"] <= 99 for r in results)
    prov = stage.provenance()
    assert prov.weights_random and prov.weights_sha256 == "" and "hopenet_r50" in prov.model


def facexlib_hopenet_state() -> dict:
    from facexlib.headpose.hopenet_arch import HopeNet

    torch.manual_seed(1)
    return HopeNet("resnet", [3, 4, 6, 3], 66).state_dict()


def pin(monkeypatch, name: str, path: Path) -> None:
    """Register ``name`` with the sha256 of a test file, as a real download would verify."""
    spec = dataclasses.replace(registry.get(name), sha256=registry.sha256_of(path))
    monkeypatch.setitem(registry.REGISTRY, name, spec)


@pytest.mark.parametrize("layout", ["deep_head_pose", "facexlib"])
def test_hopenet_real_layouts_load_strictly(tmp_path, monkeypatch, layout):
    state = facexlib_hopenet_state()
    if layout == "deep_head_pose":
        name = hopenet.HOPENET_DHP
        state["fc_finetune.weight"] = torch.randn(3, 2048 + 3)
        state["fc_finetune.bias"] = torch.randn(3)
        payload: dict = state
    else:
        name, payload = hopenet.HOPENET_FACEXLIB, {"params": state}
    path = tmp_path / registry.get(name).filename
    torch.save(payload, path)
    pin(monkeypatch, name, path)
    model = hopenet.load_hopenet(name, root=tmp_path)
    loaded = model.net.state_dict()
    assert set(loaded) == set(state)
    assert torch.equal(loaded["layer4.2.conv3.weight"], state["layer4.2.conv3.weight"])
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    stage = Pose(model="hopenet_r50", checkpoint=name, weights_dir=str(tmp_path), device="cpu")
    stage.check()
    assert stage.provenance().weights_sha256 == registry.get(name).sha256


def test_wrong_sha256_is_refused(tmp_path, monkeypatch):
    name = hopenet.HOPENET_FACEXLIB
    path = tmp_path / registry.get(name).filename
    torch.save({"params": facexlib_hopenet_state()}, path)
    monkeypatch.setitem(registry.REGISTRY, name, dataclasses.replace(registry.get(name), sha256="0" * 64))
    with pytest.raises(registry.BadChecksum):
        hopenet.load_hopenet(name, root=tmp_path)
    with pytest.raises(registry.BadChecksum):
        Pose(model="hopenet_r50", checkpoint=name, weights_dir=str(tmp_path), device="cpu").check()


def test_missing_weights_and_bad_config_fail_check(tmp_path):
    with pytest.raises(registry.MissingWeights):
        Pose(checkpoint=hopenet.HOPENET_FACEXLIB, weights_dir=str(tmp_path), device="cpu").check()
    with pytest.raises(ValueError):
        Pose(model="lightweight_headpose", checkpoint=hopenet.HOPENET_DHP, device="cpu").check()
    with pytest.raises(ValueError):
        Pose(model="nope").check()


def test_bundled_lightweight_file_matches_shared_copy():
    path = registry.resolve(hopenet.LIGHTWEIGHT)
    shared = SHARED / "weights" / "headpose" / "lightweight_headpose_b66.pkl"
    if shared.is_file():
        assert path.read_bytes() == shared.read_bytes()
    assert (path.parent / "LICENSE.lightweight_headpose.MIT").is_file()


def test_hub_flag_fetches_through_the_torch_hub_cache(tmp_path, monkeypatch):
    source = tmp_path / "upstream.pth"
    torch.save({"params": facexlib_hopenet_state()}, source)
    name = hopenet.HOPENET_FACEXLIB
    pin(monkeypatch, name, source)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    fetched = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:  # no network in tests
        fetched.append(url)
        Path(dst).write_bytes(source.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    empty = tmp_path / "weights"
    stage = Pose(model="hopenet_r50", checkpoint=name, hub=True, weights_dir=str(empty), device="cpu")
    stage.check()  # with hub, a missing file is fetched at setup instead of failing the check
    face = lfw_photo("Gerhard_Schroeder")
    res, = stage.process([Sample(key="k", identity="x", image=face)])
    assert res.status == "ok" and fetched == list(registry.get(name).urls)
    assert hopenet.hub_path(registry.get(name)).is_relative_to(tmp_path)
    assert stage.provenance().weights_sha256 == registry.get(name).sha256


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_autocast_matches_cpu(dtype, light):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images = lfw_photos(1)
    gpu = Pose(model="lightweight_headpose", crop=LFW_CROP, device="cuda", dtype=dtype)
    for a, b in zip(run(light, images), run(gpu, images)):
        assert abs(a.columns["yaw"] - b.columns["yaw"]) < 3


def test_own_bottleneck_matches_torchvision():
    """resnet.Bottleneck (Hopenet's and RetinaFace's trunk) stands in for torchvision's (so the
    stages import no torchvision):
    same parameter names, same output."""
    import torch
    from torchvision.models.resnet import Bottleneck as TvBottleneck

    torch.manual_seed(0)
    down = torch.nn.Sequential(torch.nn.Conv2d(64, 256, 1, 2, bias=False), torch.nn.BatchNorm2d(256))
    ref = TvBottleneck(64, 64, 2, down).eval()
    ours = hopenet.Bottleneck(64, 64, 2, torch.nn.Sequential(torch.nn.Conv2d(64, 256, 1, 2, bias=False),
                                                             torch.nn.BatchNorm2d(256))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 64, 28, 28)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
