"""identity stage: MobileFaceNet separates the lfw10 identities; IR-SE50 runs with random weights.

The registry's MobileFaceNet threshold (``same_identity_cosine``) was measured the way
``test_mobilefacenet_separates_lfw10`` prints it: detect (mobile0.25) -> identity on all 100
lfw10 photos, cosine of all 4950 pairs, threshold maximising same/different accuracy.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

import schemas.identity
from stages.base import OK, SKIPPED, Result, Sample
from stages.detect import Detect
from stages.identity import Identity
from stages.models import registry
from stages.models.registry import MissingWeights

SHARED = Path(__file__).resolve().parents[2] / "shared"
LFW = SHARED / "faces" / "lfw10"


def _lfw() -> list[Sample]:
    import cv2

    paths = sorted(LFW.glob("*/*.jpg"))
    if len(paths) != 100:
        pytest.skip(f"lfw10 photos not found under {LFW}")
    return [Sample(key=p.stem, identity=p.parent.name,
                   image=np.ascontiguousarray(cv2.imread(str(p))[..., ::-1])) for p in paths]


def _aligned(samples: list[Sample], detected: list[Result]) -> list[Sample]:
    return [Sample(key=s.key, identity=s.identity, image=r.frame, frame="aligned",
                   upstream={"detect": r}) for s, r in zip(samples, detected)]


@pytest.fixture(scope="module")
def detected():
    samples = _lfw()
    detect = Detect(model="retinaface_mobile0.25", device="cpu")
    detect.setup()
    results = detect.process(samples)
    assert all(r.status == OK for r in results)
    return samples, results


@pytest.fixture(scope="module")
def mobilefacenet() -> Identity:
    stage = Identity(model="mobilefacenet", device="cpu")
    stage.check()
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def embedded(detected, mobilefacenet):
    samples, results = detected
    out = mobilefacenet.process(_aligned(samples, results))
    assert all(r.status == OK for r in out)
    return np.array([r.columns["embedding"] for r in out]), np.array([s.identity for s in samples]), out


def pair_scores(emb: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    iu = np.triu_indices(len(emb), 1)
    cos, same = (emb @ emb.T)[iu], (ids[:, None] == ids[None])[iu]
    return cos[same], cos[~same]


def test_mobilefacenet_separates_lfw10(embedded):
    emb, ids, _ = embedded
    pos, neg = pair_scores(emb, ids)
    auc = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    cos = np.concatenate([pos, neg])
    truth = np.concatenate([np.ones_like(pos, bool), np.zeros_like(neg, bool)])
    grid = np.unique(cos)
    accuracy = [((cos >= t) == truth).mean() for t in grid]
    best = grid[int(np.argmax(accuracy))]
    threshold = registry.get("mobilefacenet").extra["same_identity_cosine"]
    at_registered = ((cos >= threshold) == truth).mean()
    print(f"\nMobileFaceNet lfw10: AUC {auc:.4f}, same {pos.mean():.3f}, different {neg.mean():.3f}, "
          f"best threshold {best:.3f} (accuracy {max(accuracy):.4f}), registered {threshold} "
          f"(accuracy {at_registered:.4f})")
    assert pos.mean() > neg.mean() + 0.3
    assert auc > 0.9
    assert at_registered > 0.95


def test_embedding_columns_and_file(embedded):
    emb, _, out = embedded
    assert emb.shape == (100, 128)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    table = pa.Table.from_pylist([r.columns for r in out], schema=schemas.identity.SCHEMA)
    assert table.column("dim").to_pylist() == [128] * 100
    assert min(table.column("norm_before").to_pylist()) > 1
    stored = np.load(io.BytesIO(out[0].files["id.npy"]), allow_pickle=False)
    assert stored.dtype == np.float32 and np.allclose(stored, emb[0])


def test_source_frame_and_mirror_agree(detected, embedded, mobilefacenet):
    samples, results = detected
    emb, _, _ = embedded
    picks = [0, 25, 50, 75]
    source = [Sample(key=samples[i].key, identity="x", image=samples[i].image, frame="source",
                     upstream={"detect": results[i]}) for i in picks]
    threshold = registry.get("mobilefacenet").extra["same_identity_cosine"]
    for i, r in zip(picks, mobilefacenet.process(source)):
        assert float(np.dot(r.columns["embedding"], emb[i])) > 0.9
    detect = Detect(model="retinaface_mobile0.25", device="cpu")
    mirrored = [Sample(key=samples[i].key, identity="x", image=samples[i].image[:, ::-1].copy())
                for i in picks]
    flipped = mobilefacenet.process(_aligned(mirrored, detect.process(mirrored)))
    for i, r in zip(picks, flipped):
        assert r.status == OK and float(np.dot(r.columns["embedding"], emb[i])) > threshold


def test_missing_upstream_is_skipped(mobilefacenet, detected):
    samples, _ = detected
    out = mobilefacenet.process([Sample(key="a", identity="x", image=samples[0].image, frame="aligned")])
    assert (out[0].status, out[0].error) == (SKIPPED, "no_detection")


def test_arcface_random_weights(tmp_path, monkeypatch, detected):
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path))
    with pytest.raises(MissingWeights) as err:
        Identity().check()
    assert "recognition_arcface_ir_se50.pth" in str(err.value)
    assert registry.get("arcface_irse50").urls[0] in str(err.value)
    stage = Identity(model="arcface_irse50", weights="random", device="cpu", batch_size=2)
    stage.check()
    samples, results = detected
    out = stage.process(_aligned(samples[:3], results[:3]))
    assert all(r.status == OK and r.columns["dim"] == 512 for r in out)
    assert np.allclose(np.linalg.norm(out[0].columns["embedding"]), 1, atol=1e-4)
    prov = stage.provenance()
    assert prov.weights_random and prov.model == "arcface_irse50" and prov.weights_sha256 == ""


def test_bad_config_raises():
    for bad in (dict(model="retinaface_mobile0.25"), dict(weights="x"), dict(batch_size=-1)):  # 0 = automatic
        with pytest.raises(ValueError):
            Identity(**{"model": "mobilefacenet", **bad}).check()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_cuda_matches_cpu(detected, embedded, dtype):
    samples, results = detected
    emb, _, _ = embedded
    stage = Identity(model="mobilefacenet", device="cuda", dtype=dtype, batch_size=32)
    out = stage.process(_aligned(samples, results))
    cuda = np.array([r.columns["embedding"] for r in out])
    assert np.min(np.sum(cuda * emb, axis=1)) > 0.98
