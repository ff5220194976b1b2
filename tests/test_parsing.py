"""parsing stage: random-weight BiSeNet end to end, real key layouts, class order and face mask."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

import schemas.parsing as sp
from schemas.common import manifest_schema
from stages.base import Sample
from stages.models import parsing, registry
from stages.parsing import Parsing

SHARED = Path(__file__).resolve().parents[2] / "shared"
FACE = SHARED / "faces" / "lfw10" / "Colin_Powell" / "Colin_Powell_0001.jpg"


def face() -> np.ndarray:
    if not FACE.is_file():
        pytest.skip(f"real face photo missing: {FACE}")
    return cv2.cvtColor(cv2.imread(str(FACE)), cv2.COLOR_BGR2RGB)


def decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_class_set_is_documented_and_consistent():
    assert len(sp.CLASSES) == len(sp.PARSENET_CLASSES) == 19
    assert set(sp.CLASSES) == set(sp.PARSENET_CLASSES)
    assert sp.CLASSES[1] == "skin" and sp.CLASSES[10] == "nose" and sp.CLASSES[17] == "hair"
    assert [sp.CLASSES[i] for i in sp.FACE_MASK_IDS] == list(sp.FACE_MASK_CLASSES)
    assert not {"hair", "eye_g", "l_ear", "r_ear", "neck", "hat", "background"} & set(sp.FACE_MASK_CLASSES)
    manifest_schema(sp.SCHEMA)


def test_random_bisenet_labels_and_face_mask():
    stage = Parsing(weights="random", device="cpu", batch_size=2)
    stage.check()
    image = face()
    square = cv2.resize(image, (512, 512))
    results = stage.process([Sample(key="a", identity="x", image=image),
                             Sample(key="b", identity="x", image=square, frame="aligned"),
                             Sample(key="c", identity="x", image=None)])
    assert [r.status for r in results] == ["ok", "ok", "error"]
    assert results[2].error == "bad_image"
    for res, src in zip(results, (image, square)):
        labels = decode_png(res.files[sp.PARSING_IMAGE])
        mask = decode_png(res.files[sp.FACE_MASK_IMAGE])
        assert labels.shape == mask.shape == src.shape[:2]
        assert labels.dtype == mask.dtype == np.uint8
        assert labels.max() < 19
        assert set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, np.isin(labels, sp.FACE_MASK_IDS))
        fraction = res.columns["class_fraction"]
        assert len(fraction) == 19 and sum(fraction) == pytest.approx(1.0, abs=1e-4)
        assert res.columns["face_mask_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert res.columns["model_classes"] == "celebamask19"
    pa.Table.from_pylist([r.columns for r in results[:2]], schema=sp.SCHEMA)
    prov = stage.provenance()
    assert prov.weights_random and prov.model == parsing.BISENET


class OneHot(nn.Module):
    """Stub parser: class scores that are the one-hot of a fixed label, in the net's own order."""

    def __init__(self, label: int):
        super().__init__()
        self.label = label

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        scores = torch.zeros(x.shape[0], 19, *x.shape[2:])
        scores[:, self.label] = 1.0
        return (scores,)


def test_parsenet_output_is_remapped_to_bisenet_order():
    nose_in_parsenet = sp.PARSENET_CLASSES.index("nose")
    model = parsing.FaceParser(OneHot(nose_in_parsenet), "parsenet", (0.5,) * 3, (0.5,) * 3,
                               sp.PARSENET_CLASSES)
    labels = model(torch.rand(1, 3, 8, 8)).argmax(dim=1)
    assert (labels == sp.CLASSES.index("nose")).all()


def save_and_pin(monkeypatch, tmp_path: Path, name: str, state: dict) -> None:
    path = tmp_path / registry.get(name).filename
    torch.save(state, path)
    spec = dataclasses.replace(registry.get(name), sha256=registry.sha256_of(path))
    monkeypatch.setitem(registry.REGISTRY, name, spec)


@pytest.mark.parametrize("name", [parsing.BISENET, parsing.PARSENET])
def test_real_key_layout_loads_strictly(tmp_path, monkeypatch, name):
    # the release files are the plain state dicts of facexlib's own classes
    from facexlib.parsing import BiSeNet, ParseNet

    torch.manual_seed(2)
    net = BiSeNet(num_class=19) if name == parsing.BISENET else ParseNet(512, 512, parsing_ch=19)
    state = net.state_dict()
    save_and_pin(monkeypatch, tmp_path, name, state)
    model = parsing.load_parsing(name, root=tmp_path)
    loaded = model.net.state_dict()
    assert set(loaded) == set(state)
    key = next(k for k in state if k.endswith("weight"))
    assert torch.equal(loaded[key], state[key])
    model_name = "bisenet" if name == parsing.BISENET else "parsenet"
    stage = Parsing(model=model_name, weights_dir=str(tmp_path), device="cpu")
    stage.check()
    assert stage.provenance().weights_sha256 == registry.get(name).sha256


def test_wrong_sha256_and_missing_file_are_refused(tmp_path, monkeypatch):
    name = parsing.BISENET
    with pytest.raises(registry.MissingWeights):
        Parsing(weights_dir=str(tmp_path), device="cpu").check()
    (tmp_path / registry.get(name).filename).write_bytes(b"not the real file")
    with pytest.raises(registry.BadChecksum):
        Parsing(weights_dir=str(tmp_path), device="cpu").check()
    with pytest.raises(registry.BadChecksum):
        parsing.load_parsing(name, root=tmp_path)
    with pytest.raises(ValueError):
        Parsing(model="segformer", weights="random").check()


@pytest.mark.gpu
def test_cuda_bf16_random_parsenet():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    stage = Parsing(model="parsenet", weights="random", device="cuda", dtype="bf16")
    res, = stage.process([Sample(key="a", identity="x", image=face())])
    assert res.status == "ok" and decode_png(res.files[sp.PARSING_IMAGE]).max() < 19
