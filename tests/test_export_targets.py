"""IP-Adapter-FaceID, InstantID and Face2Diffusion exports read by their trainers' documented rules.

Rules (docs/exports.md), written from what the targets do:
* IP-Adapter ``tutorial_train_faceid.py``: a JSON list of image_file / text / id_embed_file;
  image_file joined with --data_root_path, id_embed_file opened as given (run from DIR);
  ``torch.load`` -> a 512-d vector, stacked by ``collate_fn`` into ``MLPProjModel(512)``.
* MFaceTech InstantID ``train_instantId_sdxl.py``: JSONL, paths joined with the root, five
  keypoints in image pixels, ``torch.load(...).reshape(1, -1)`` -> (1, 512) at the raw scale.
* Face2Diffusion: image + five points -> the 112x112 ArcFace-template warp MSID reads.
Every ``torch.load`` here uses ``weights_only=True``, the default since torch 2.6.

The 512-d runs use IR-SE50 with random weights (no recognition weights offline), so the
"model differs from the target's" warning must fire; the insightface ONNX loader is tested on a
tiny ONNX graph with the real models' input/output signature (the real graphs are not here).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.readers.export import export
from pipeline.readers.export.embedding import MISMATCH
from stages.models import align
from tests.test_audit import build_out
from tests.test_export_dense_face import build_out_512


@pytest.fixture(scope="module")
def out512(tmp_path_factory):
    return build_out_512(tmp_path_factory)


def _norms_before(out: Path) -> dict[str, float]:
    rows = [r for p in sorted((out / "manifests" / "identity").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r["key"]: r["norm_before"] for r in rows if r["status"] == "ok"}


@pytest.mark.parametrize("fmt", ["ip-adapter-faceid", "instantid"])
def test_128d_exports_are_refused_in_one_line(tmp_path_factory, tmp_path, fmt):
    with pytest.raises(ValueError) as err:
        export(build_out(tmp_path_factory), fmt, tmp_path / "x")
    message = str(err.value)
    assert "\n" not in message and "512-d" in message and "128-d mobilefacenet" in message
    assert "identity.model=insightface_" in message and not (tmp_path / "x").exists()


def test_cli_says_it_loudly(out512, tmp_path_factory, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    ok = CliRunner().invoke(app, ["export", str(out512), "--format", "instantid", "--to", str(tmp_path / "a")])
    assert ok.exit_code == 0 and f"warning: {MISMATCH}" in ok.output and "insightface_glintr100" in ok.output
    refused = CliRunner().invoke(app, ["export", str(build_out(tmp_path_factory)), "--format", "ip-adapter-faceid",
                                       "--to", str(tmp_path / "b")])
    lines = [x for x in refused.output.splitlines() if x.strip()]
    assert refused.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "512-d" in lines[0]


def test_ip_adapter_faceid(out512, tmp_path):
    root = tmp_path / "ip"
    summary = export(out512, "ip-adapter-faceid", root)
    data = json.loads((root / "data.json").read_text())
    assert len(data) == summary["samples"] == 10
    embeds = []
    cwd = os.getcwd()
    os.chdir(root)  # the script opens id_embed_file as given: run it from DIR
    try:
        for item in data:
            assert set(item) == {"image_file", "text", "id_embed_file"}
            assert not os.path.isabs(item["image_file"]) and not os.path.isabs(item["id_embed_file"])
            assert Image.open(os.path.join(str(root), item["image_file"])).convert("RGB").size == (512, 512)
            emb = torch.load(item["id_embed_file"], map_location="cpu", weights_only=True)
            assert isinstance(emb, torch.Tensor) and emb.shape == (512,) and emb.dtype == torch.float32
            assert float(emb.norm()) == pytest.approx(1, abs=1e-4)  # normed_embedding
            embeds.append(torch.as_tensor(emb))
    finally:
        os.chdir(cwd)
    batch = torch.stack(embeds)  # collate_fn
    proj = torch.nn.Linear(512, 16)  # MLPProjModel(id_embeddings_dim=512)'s first layer
    assert proj(batch).shape == (10, 16)
    assert any(MISMATCH in w and "insightface_w600k_r50" in w for w in summary["warnings"])
    assert summary["expected_embedding_model"] == "insightface_w600k_r50"
    assert summary["embedding_model_matches"] is False and summary["embedding_scale"] == "unit"
    moved = tmp_path / "moved"
    os.rename(root, moved)  # relative paths: the folder can move
    assert all((moved / item["id_embed_file"]).is_file() for item in data)


def test_instantid_raw_scale(out512, tmp_path):
    root = tmp_path / "iid"
    summary = export(out512, "instantid", root)
    items = [json.loads(line) for line in (root / "instantid.jsonl").read_text().splitlines()]
    assert len(items) == summary["samples"] == 10
    norms = _norms_before(out512)
    for item in items:
        image = Image.open(os.path.join(root, item["file_name"]))
        kps = np.array(item["landmarks"])
        assert kps.shape == (5, 2) and (kps >= 0).all() and (kps < image.size[0]).all()
        assert kps[0, 0] < kps[1, 0] and kps[[0, 1], 1].max() < kps[2, 1] < kps[[3, 4], 1].min()
        emb = torch.load(os.path.join(root, item["insightface_feature_file"]), map_location="cpu",
                         weights_only=True)
        emb = torch.as_tensor(emb).reshape(1, -1)
        assert emb.shape == (1, 512)
        assert float(emb.norm()) == pytest.approx(norms[item["key"]], rel=1e-4)  # the raw norm
    assert any(MISMATCH in w and "insightface_glintr100" in w for w in summary["warnings"])
    assert summary["embedding_scale"] == "raw" and "as_tensor" in summary["trainer_patch"]
    exported = json.loads((root / "export.json").read_text())
    assert any(MISMATCH in w for w in exported["warnings"])


def test_f2d_writes_what_upstream_consumes(out512, tmp_path):
    root = tmp_path / "f2d"
    summary = export(out512, "f2d", root)
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == summary["samples"] == 10 and summary["msid_vectors"] == 0
    assert "64-d" in summary["expression_note"] and summary["expression_dim"] == 10
    for x in lines:
        image = np.asarray(Image.open(root / x["image"]).convert("RGB"))
        aligned = np.asarray(Image.open(root / x["aligned"]))
        assert aligned.shape == (112, 112, 3) and x["msid"] is None
        points, warp = np.load(root / x["points"]), np.load(root / x["warp"])
        assert points.shape == (5, 2) and warp.shape == (3, 3) and points[0, 0] < points[1, 0]
        mapped = np.c_[points, np.ones(5)] @ warp.T
        residual = np.linalg.norm(mapped[:, :2] - align.ARCFACE_112, axis=1)  # the template MSID reads
        assert residual.mean() < 5 and residual[:2].max() < 6  # a similarity fit: turned noses sit off
        assert np.load(root / x["expression"]).shape == (10,)
        assert image.shape[:2] == (512, 512)


def test_insightface_loader_on_a_tiny_onnx_graph(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from stages.identity import Identity
    from stages.models import insightface, load, registry

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 28 * 28, 512)).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 112, 112), str(path), input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}},
                      dynamo=False)
    model = insightface.OnnxEmbedder.from_path(path)
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-4)
    for name, pack in (("insightface_w600k_r50", "buffalo_l"), ("insightface_glintr100", "antelopev2")):
        spec = registry.get(name)
        assert spec.family == "insightface" and len(spec.sha256) == 64 and spec.urls and spec.extra["dim"] == 512
        assert spec.extra["pack"] == pack and spec.filename == f"{name.split('_', 1)[1]}.onnx"
    # the registry path: a file that is not the pinned one is refused before onnxruntime opens it
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "w"))
    with pytest.raises(registry.MissingWeights):
        load("insightface_w600k_r50")
    dest = registry.path_of("insightface_w600k_r50")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(path.read_bytes())
    with pytest.raises(registry.BadChecksum):
        load("insightface_w600k_r50")
    with pytest.raises(ValueError, match="random"):
        Identity(model="insightface_glintr100", weights="random").check()
    bad = tmp_path / "bad.onnx"
    torch.onnx.export(torch.nn.Flatten(), torch.zeros(1, 3, 64, 64), str(bad), dynamo=False)
    with pytest.raises(ValueError, match="112"):
        insightface.OnnxEmbedder(ort.InferenceSession(str(bad), providers=["CPUExecutionProvider"]))


def test_identity_stage_runs_an_onnx_model(tmp_path):
    """The identity stage feeds an insightface graph like IR-SE50 and keeps its raw norm."""
    pytest.importorskip("onnx")
    from stages.identity import Identity
    from stages.models import insightface

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 112 * 112, 512)).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 112, 112), str(path), input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}},
                      dynamo=False)
    stage = Identity(model="mobilefacenet", device="cpu", batch_size=2)
    stage.setup()
    stage._net = insightface.OnnxEmbedder.from_path(path)
    stage._mean = torch.full((1, 3, 1, 1), 127.5)
    stage._std = torch.full((1, 3, 1, 1), 127.5)
    face = np.array(Image.open(io.BytesIO(_face_jpeg())).convert("RGB").resize((112, 112)))
    unit, norms = stage.embed([face, face[:, ::-1].copy()])
    with torch.no_grad():
        expected = net((torch.from_numpy(face).permute(2, 0, 1)[None].float() - 127.5) / 127.5)
    assert unit.shape == (2, 512) and norms[0] == pytest.approx(float(expected.norm()), rel=1e-4)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)


def _face_jpeg() -> bytes:
    from tests.conftest import LFW

    if not LFW.is_dir():
        pytest.skip(f"real faces missing: {LFW}")
    return (LFW / "Colin_Powell" / "Colin_Powell_0001.jpg").read_bytes()


@pytest.mark.slow
def test_every_export_has_rows_on_a_default_preset_run(tmp_path_factory):
    """The full (default) preset's stages feed every exporter. Random weights where the real ones
    are not here, except detect (the bundled mobile RetinaFace: a random detector finds no face)
    and restore, which is left out: random CodeFormer paints noise, where no face mesh is found."""
    from pipeline.config import resolve
    from pipeline.readers.export import FORMATS
    from pipeline.core.runner import run
    from tests.conftest import make_casia_tree
    from tests.fixtures import tiny_hf

    base = tmp_path_factory.mktemp("default-preset")
    models = tiny_hf.tiny_models(base / "hf")
    stages = [s for s in resolve(preset="full").stages if s != "restore"]
    assert "expression" in stages and resolve(preset="full").stage_config["landmarks"]["refine"] is True
    sets = ["detect.model=retinaface_mobile0.25", "pose.weights=random", "parsing.weights=random",
            "identity.weights=random", f"caption.model_paths={{blip_base: '{models['blip_base']}'}}",
            "caption.captioners=[blip_base]", f"caption.clip_model={models['clip']}", "caption.device=cpu",
            "caption.min_score=-1.0", "caption.max_new_tokens=6", "caption.n_beam=1", "caption.n_sample=1",
            "caption.num_beams=1", f"attributes.clip_model={models['clip']}"]
    out = base / "out"
    cfg = resolve(preset="full", flags={"source": "casia-webface", "input": str(make_casia_tree(base / "tree", 2, 2)),
                                        "out": str(out), "executor": "local", "shard_size": 8,
                                        "stages": ",".join(stages)}, sets=sets)
    run(cfg, quiet=True)
    for fmt in FORMATS:
        summary = export(out, fmt, base / f"export-{fmt}")
        assert summary.get("samples", summary.get("pairs", 0)) > 0, (fmt, summary["warnings"])
        if fmt == "dense-face":
            assert summary["msmask"] == "parsing" and len(summary["msmask_colours"]) == 19
        if fmt == "f2d":
            assert summary["with_expression"] == summary["samples"]
