"""restore stage: tiny random CodeFormer end to end, the real checkpoint layout, config checks."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

import schemas.restore
from schemas.common import manifest_schema
from stages.base import Sample
from stages.models import codeformer, registry
from stages.restore import Restore

SHARED = Path(__file__).resolve().parents[2] / "shared"
FACE = SHARED / "faces" / "lfw10" / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg"


def face() -> np.ndarray:
    if not FACE.is_file():
        pytest.skip(f"real face photo missing: {FACE}")
    return cv2.cvtColor(cv2.imread(str(FACE)), cv2.COLOR_BGR2RGB)


def test_tiny_random_codeformer_restores_a_512_crop():
    stage = Restore(arch="tiny", weights="random", device="cpu", fidelity_w=0.7)
    stage.check()
    crop = cv2.resize(face(), (512, 512), interpolation=cv2.INTER_CUBIC)
    res, bad = stage.process([Sample(key="a", identity="x", image=crop, frame="aligned"),
                              Sample(key="b", identity="x", image=np.zeros((8, 8, 3), np.float32))])
    assert res.status == "ok"
    assert res.frame.shape == (512, 512, 3) and res.frame.dtype == np.uint8
    raw = cv2.cvtColor(cv2.imdecode(np.frombuffer(res.files["raw.jpg"], np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    assert raw.shape == crop.shape
    assert np.abs(raw.astype(int) - crop.astype(int)).mean() < 3  # the un-restored input, as JPEG
    assert res.columns == {"fidelity_w": pytest.approx(0.7), "input_frame": "aligned"}
    assert (bad.status, bad.error) == ("error", "bad_image")
    table = pa.Table.from_pylist([res.columns], schema=schemas.restore.SCHEMA)
    assert table.column("fidelity_w").null_count == 0
    manifest_schema(schemas.restore.SCHEMA)
    prov = stage.provenance()
    assert prov.weights_random and prov.model == "codeformer:tiny" and prov.weights_sha256 == ""


def test_config_checks(tmp_path):
    with pytest.raises(ValueError):
        Restore(arch="tiny", weights="pretrained").check()
    with pytest.raises(ValueError):
        Restore(arch="tiny", weights="random", fidelity_w=1.5).check()
    with pytest.raises(ValueError):
        Restore(arch="huge", weights="random").check()
    with pytest.raises(registry.MissingWeights):
        Restore(weights_dir=str(tmp_path), device="cpu").check()
    assert Restore.produces_frame == "restored" and Restore.files == ("raw.jpg",)


def test_wrong_sha256_is_refused(tmp_path):
    (tmp_path / registry.get(codeformer.WEIGHTS).filename).write_bytes(b"\0" * 1024)
    with pytest.raises(registry.BadChecksum):
        Restore(weights_dir=str(tmp_path), device="cpu").check()
    with pytest.raises(registry.BadChecksum):
        codeformer.load_codeformer(root=tmp_path)


def test_full_checkpoint_layout_loads_strictly(tmp_path, monkeypatch):
    # the release file stores the full model's state dict under 'params_ema' (~377 MB)
    from codeformer.basicsr.archs.codeformer_arch import CodeFormer

    torch.manual_seed(3)
    state = CodeFormer(**codeformer.FULL_ARGS).state_dict()
    assert state["quantize.embedding.weight"].shape == (1024, 256)
    assert state["position_emb"].shape == (256, 512)
    path = tmp_path / registry.get(codeformer.WEIGHTS).filename
    torch.save({"params_ema": state}, path)
    spec = dataclasses.replace(registry.get(codeformer.WEIGHTS), sha256=registry.sha256_of(path))
    monkeypatch.setitem(registry.REGISTRY, codeformer.WEIGHTS, spec)
    net = codeformer.load_codeformer(root=tmp_path)
    loaded = net.state_dict()
    assert set(loaded) == set(state)
    assert torch.equal(loaded["ft_layers.8.linear2.weight"], state["ft_layers.8.linear2.weight"])
    stage = Restore(weights_dir=str(tmp_path), device="cpu")
    stage.check()
    assert stage.provenance().weights_sha256 == spec.sha256


def test_non_square_input_comes_back_at_its_own_size():
    stage = Restore(arch="tiny", weights="random", device="cpu")
    image = face()[:, 20:230]
    res, = stage.process([Sample(key="a", identity="x", image=np.ascontiguousarray(image))])
    assert res.status == "ok" and res.frame.shape == image.shape


@pytest.mark.gpu
def test_cuda_fp16_tiny_restore():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    stage = Restore(arch="tiny", weights="random", device="cuda", dtype="fp16", batch_size=2)
    crop = cv2.resize(face(), (512, 512))
    results = stage.process([Sample(key=k, identity="x", image=crop) for k in "ab"])
    assert all(r.status == "ok" and r.frame.shape == (512, 512, 3) for r in results)
