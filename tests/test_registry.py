"""Weights registry: verification before loading, safe unpickling, fetch, verify, key layouts."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from unittest import mock

import pytest
import torch

import stages.models as models
from stages.models import common, registry
from stages.models.registry import BadChecksum, MissingWeights, UnverifiedWeights, WeightsSpec


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty weights directory, used as $FACEWEAVE_WEIGHTS."""
    directory = tmp_path / "weights"
    directory.mkdir()
    monkeypatch.setenv(registry.ENV_VAR, str(directory))
    monkeypatch.delenv(registry.UNVERIFIED_ENV_VAR, raising=False)
    return directory


def _spec(monkeypatch, **kw) -> WeightsSpec:
    spec = WeightsSpec(**{"name": "test_file", "family": "none", "filename": "test.pth", "sha256": "", **kw})
    monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
    return spec


def _pin(monkeypatch, name: str, path: Path) -> None:
    """Point ``name``'s registry entry at the sha256 of a file we wrote ourselves."""
    monkeypatch.setitem(registry.REGISTRY, name,
                        dataclasses.replace(registry.get(name), sha256=_sha(path), size=path.stat().st_size))


def test_families_have_loaders_and_pinned_weights():
    for name in ("retinaface_resnet50", "retinaface_mobile0.25", "arcface_irse50", "mobilefacenet"):
        spec = registry.get(name)
        assert spec.family in models.FAMILIES and len(spec.sha256) == 64
        assert spec.bundled or spec.urls[0].startswith("https://github.com/xinntao/facexlib/releases/")


def test_bundled_weights_verify(root):
    status = dict(registry.verify())
    assert status["retinaface_mobile0.25"] == "ok"
    assert status["mobilefacenet"] == "ok"
    assert status["retinaface_resnet50"] == "missing"
    for name in ("retinaface_mobile0.25", "mobilefacenet"):
        path = registry.resolve(name)
        assert path.parent == registry.BUNDLED_DIR
        assert (registry.BUNDLED_DIR / f"LICENSE.{name.split('_')[0]}.Apache-2.0").is_file()


def test_missing_file_names_file_and_url(root):
    with pytest.raises(MissingWeights) as err:
        registry.resolve("retinaface_resnet50")
    msg = str(err.value)
    assert "detection_Resnet50_Final.pth" in msg and str(root) in msg
    assert "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth" in msg
    with pytest.raises(MissingWeights, match="recognition_arcface_ir_se50.pth"):
        models.load("arcface_irse50")


@pytest.mark.fault("weights file with a wrong sha256", injection="a registry entry pointing at a file with another hash", behaviour="refused before torch.load is called", compared="torch.load never invoked")
def test_wrong_sha_refused_before_torch_load(root):
    torch.save({"w": torch.zeros(2)}, root / "detection_Resnet50_Final.pth")
    with mock.patch("torch.load", side_effect=AssertionError("torch.load called")) as load:
        with pytest.raises(BadChecksum, match="does not match"):
            registry.load_state_dict("retinaface_resnet50")
        with pytest.raises(BadChecksum):
            models.load("retinaface_resnet50")
    load.assert_not_called()


class _Payload:
    """Unpickling this would create the marker file: code carried inside a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.fault("checkpoint pickle carrying code", injection="a crafted pickle whose __reduce__ runs code", behaviour="weights_only loading refuses it; the code never runs", compared="side effect absent")
def test_pickle_with_code_is_never_executed(root, monkeypatch):
    marker = root / "pwned"
    path = root / "test.pth"
    torch.save({"w": torch.zeros(1), "evil": _Payload(marker)}, path)
    _spec(monkeypatch, sha256=_sha(path))
    with pytest.raises(Exception) as err:
        registry.load_state_dict("test_file")
    assert "weights_only" in str(err.value) or "Unsupported" in str(err.value)
    assert not marker.exists()


def test_unpinned_sha_needs_explicit_permission(root, monkeypatch):
    path = root / "test.pth"
    torch.save({"w": torch.ones(3)}, path)
    _spec(monkeypatch)
    with pytest.raises(UnverifiedWeights, match="allow_unverified"):
        registry.load_state_dict("test_file")
    assert registry.load_state_dict("test_file", allow_unverified=True)["w"].sum() == 3
    monkeypatch.setenv(registry.UNVERIFIED_ENV_VAR, "1")
    assert registry.resolve("test_file") == path
    assert dict(registry.verify())["test_file"] == f"unpinned:{_sha(path)}"


def test_fetch_verifies_then_renames(root, tmp_path, monkeypatch):
    upstream = tmp_path / "upstream.bin"
    upstream.write_bytes(b"weights" * 1000)
    good = _sha(upstream)
    _spec(monkeypatch, sha256=good, urls=(tmp_path.joinpath("absent").as_uri(), upstream.as_uri()))
    assert registry.fetch(["test_file"]) == [root / "test.pth"]
    assert _sha(root / "test.pth") == good
    assert sorted(p.name for p in root.iterdir()) == ["test.pth"]  # no temp file left
    assert dict(registry.verify())["test_file"] == "ok"
    upstream.write_bytes(b"tampered")  # already present and valid: not downloaded again
    assert registry.fetch(["test_file"]) == [root / "test.pth"] and _sha(root / "test.pth") == good

    (root / "test.pth").write_bytes(b"corrupt")
    assert dict(registry.verify())["test_file"] == "bad_checksum"
    with pytest.raises(BadChecksum, match="expected"):
        registry.fetch(["test_file"])
    assert sorted(p.name for p in root.iterdir()) == ["test.pth"]
    assert (root / "test.pth").read_bytes() == b"corrupt"  # a bad download never replaces it


def test_fetch_refuses_unpinned_unless_allowed(root, tmp_path, monkeypatch):
    upstream = tmp_path / "upstream.bin"
    upstream.write_bytes(b"abc")
    _spec(monkeypatch, urls=(upstream.as_uri(),))
    with pytest.raises(BadChecksum, match="no pinned sha256"):
        registry.fetch(["test_file"])
    assert not (root / "test.pth").exists()
    registry.fetch(["test_file"], allow_unverified=True)
    assert (root / "test.pth").read_bytes() == b"abc"


def test_strict_loading_rejects_wrong_keys():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="missing"):
        common.load_into(model, {"0.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="shape mismatch"):
        common.load_into(model, {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(2)})
    state = {"module.0.weight": torch.ones(2, 2), "module.0.bias": torch.zeros(2)}
    assert common.load_into(model, state)[0].weight.sum() == 4


def _roundtrip(name: str, root: Path, monkeypatch, prefix: str = "") -> None:
    """Save a random model's state dict under ``name``'s file name, load it via the registry."""
    reference = models.load(name, random_init=True)
    path = root / registry.get(name).filename
    torch.save({prefix + k: v for k, v in reference.state_dict().items()}, path)
    _pin(monkeypatch, name, path)
    with mock.patch("torch.hub.download_url_to_file", side_effect=AssertionError("download")):
        loaded = models.load(name)
    for (k, a), b in zip(reference.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert common.provenance(name, False).weights_sha256 == _sha(path)


def test_retinaface_resnet50_real_key_layout(root, monkeypatch):
    # biubug6's original checkpoints carry a DataParallel 'module.' prefix; accept both layouts
    _roundtrip("retinaface_resnet50", root, monkeypatch, prefix="module.")
    assert "module.body.layer2.0.conv1.weight" in registry.load_state_dict("retinaface_resnet50", root)


def test_arcface_irse50_real_key_layout(root, monkeypatch):
    _roundtrip("arcface_irse50", root, monkeypatch)
    keys = registry.load_state_dict("arcface_irse50", root)
    assert "body.23.res_layer.5.fc1.weight" in keys and "output_layer.3.weight" in keys


def test_random_init_reads_no_file_and_is_reproducible(root):
    with mock.patch("torch.load", side_effect=AssertionError("torch.load called")):
        a = models.load("mobilefacenet", random_init=True)
        b = models.load("mobilefacenet", random_init=True)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    prov = common.provenance("mobilefacenet", True)
    assert prov.weights_random and prov.weights_sha256 == ""
