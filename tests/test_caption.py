"""The caption stage: tiny random BLIP/GIT/CLIP from local dirs, ranking, config and model lookup."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.manifest import validate_columns
from schemas import caption as cs
from schemas.common import manifest_schema
from stages import captioners as caps
from stages.base import OK, Sample
from stages.caption import Caption, caption_columns, select
from tests.fixtures import tiny_hf

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw10"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_hf.tiny_models(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="module")
def faces() -> list[Sample]:
    if not FACES.is_dir():
        pytest.skip(f"real faces missing: {FACES}")
    people = sorted(p for p in FACES.iterdir() if p.is_dir())[:3]
    return [Sample(key=f"k{i}", identity=p.name, frame="aligned",
                   image=np.array(Image.open(sorted(p.glob("*.jpg"))[0]).convert("RGB")))
            for i, p in enumerate(people)]


def tiny_stage(models: dict[str, Path], **kw) -> Caption:
    values = dict(model_paths={"blip_base": str(models["blip_base"]), "blip_large": str(models["blip_large"])},
                  clip_model=str(models["clip"]), device="cpu", min_score=-1.0, max_new_tokens=8,
                  n_beam=2, n_sample=2, num_beams=2)
    return Caption(**{**values, **kw})


def manifest_rows(stage: Caption, batch: list[Sample], results) -> list[dict]:
    prov = stage.provenance()
    rows = []
    for sample, res in zip(batch, results):
        row = {name: None for name in stage.schema.names}
        row.update(res.columns)
        row.update(key=sample.key, status=res.status, error=res.error, duration_s=0.0, stage=stage.name,
                   stage_version=stage.version, frame=sample.frame, model=prov.model,
                   weights_sha256=prov.weights_sha256, weights_random=prov.weights_random, config_hash="x")
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def captioned(models, faces):
    stage = tiny_stage(models)
    stage.check()
    stage.setup()
    return stage, stage.process(faces)


def test_end_to_end_columns_validate(captioned, faces):
    stage, results = captioned
    assert [r.status for r in results] == [OK] * len(faces)
    table = validate_columns(manifest_rows(stage, faces, results), manifest_schema(stage.schema))
    assert table.num_rows == len(faces)
    for res in results:
        c = res.columns
        n = 2 * (2 + 2)  # two captioners x (2 beam + 2 sampled)
        assert len(c["candidates"]) == len(c["candidate_raw"]) == len(c["candidate_scores"]) == n
        assert c["candidate_sources"] == ["blip_base:beam"] * 2 + ["blip_base:sample"] * 2 + \
            ["blip_large:beam"] * 2 + ["blip_large:sample"] * 2
        assert 1 <= len(c["captions"]) <= 3 and len(set(c["captions"])) == len(c["captions"])
        assert c["caption_scores"] == sorted(c["caption_scores"], reverse=True)
        assert all(-1 <= s <= 1 for s in c["caption_scores"])
        for caption, word, (start, end) in zip(c["captions"], c["subject_words"], c["subject_spans"]):
            assert caption[start:end] == word if word else (start, end) == (-1, -1)
            assert "[unused" not in caption and "##" not in caption
        assert all(raw in c["candidate_raw"] for raw in c["caption_raw"])
        assert c["clip_model"] == str(stage.clip_model)


def test_random_weights_in_provenance(captioned, models):
    stage, _ = captioned
    prov = stage.provenance()
    assert prov.weights_random and len(prov.weights_sha256) == 64
    assert "blip_base" in prov.model and str(models["clip"]) in prov.weights
    (models["clip"] / caps.RANDOM_MARKER).rename(models["clip"] / "marker.off")
    try:
        fresh = tiny_stage(models, captioners=["blip_base"])
        assert fresh.provenance().weights_random  # blip_base is still marked
        assert fresh.provenance().weights_sha256 != prov.weights_sha256
    finally:
        (models["clip"] / "marker.off").rename(models["clip"] / caps.RANDOM_MARKER)


def test_rerun_is_reproducible_and_bad_image_fails(captioned, faces):
    stage, first = captioned
    again = stage.process(faces + [dataclasses.replace(faces[0], key="bad", image=np.zeros((4, 4), np.uint8))])
    assert [r.columns for r in again[:-1]] == [r.columns for r in first]
    assert (again[-1].status, again[-1].error) == ("error", "bad_image")


def test_select_ranks_dedupes_and_filters():
    cleaned = ["a man", "a man", "", "a man smiling", "a woman", "a person"]
    scores = [0.20, 0.30, None, 0.25, 0.10, 0.05]
    assert select(cleaned, scores, k=3, min_score=0.0) == [1, 3, 4]
    assert select(cleaned, scores, k=3, min_score=0.12) == [1, 3]
    assert select(cleaned, scores, k=1, min_score=-1) == [1]
    assert select(["a", "b"], [0.2, 0.2], k=2, min_score=0) == [0, 1]  # ties keep candidate order
    assert select(["a", "b"], [math.nan, 0.1], k=2, min_score=0) == [1]
    assert select(cleaned, scores, k=3, min_score=0.9) == []


class FixedCaptioner(caps.Captioner):
    """A registered captioner that needs no model: shows a new name plugs in without stage edits."""

    TEXTS = ["arafed man in a suit and tie", "there is a man that is standing in front of a wall",
             "a close up of a man with a beard [unused0]", "araffe man in a suit and tie", "[unused0]"]

    def load(self, path, device, dtype) -> None:
        self.loaded_from = Path(path)

    def generate(self, images, n_beam, n_sample, prompt="", max_new_tokens=30):
        return [self.TEXTS[:n_beam + n_sample] for _ in images]


class StubScorer:
    """Scores a caption by its length, so the ranking is known in advance."""

    def score(self, images, texts):
        return [[len(t) / 100 if t else None for t in per_image] for per_image in texts]


@pytest.fixture
def fixed(models):
    caps.register("fixed_test", FixedCaptioner, str(models["blip_base"]))
    yield
    caps.CAPTIONERS.pop("fixed_test")


def test_ranking_with_stub_captioner_and_scorer(models, fixed):
    stage = Caption(captioners=["fixed_test"], clip_model=str(models["clip"]), device="cpu",
                    n_beam=3, n_sample=2, num_beams=3, min_score=0.25, k=3)
    stage.check()
    stage.setup()
    assert stage._captioners["fixed_test"].loaded_from == models["blip_base"]
    stage._scorer = StubScorer()
    image = np.zeros((64, 64, 3), np.uint8)
    (res,) = stage.process([Sample(key="a", identity="0000001", image=image)])
    c = res.columns
    assert c["candidates"] == ["a man in a suit and tie", "a man standing in front of a wall",
                               "a close up of a man with a beard", "a man in a suit and tie", ""]
    assert c["candidate_scores"][-1] is None
    # the duplicate cleaned caption is kept once; "a man in a suit and tie" (0.23) is below min_score
    assert c["captions"] == ["a man standing in front of a wall", "a close up of a man with a beard"]
    assert c["caption_raw"] == [FixedCaptioner.TEXTS[1], FixedCaptioner.TEXTS[2]]
    assert c["subject_spans"] == [[2, 5], [16, 19]] and c["subject_words"] == ["man", "man"]
    assert c["candidate_sources"] == ["fixed_test:beam"] * 3 + ["fixed_test:sample"] * 2


def test_identity_name_is_removed(models, fixed):
    stage = Caption(captioners=["fixed_test"], clip_model=str(models["clip"]), device="cpu", n_beam=1,
                    n_sample=0, num_beams=1, min_score=-1)
    stage.setup()  # then swap in the stubs: process() never sets up twice
    stage._captioners = {"fixed_test": FixedCaptioner()}
    stage._scorer = StubScorer()
    stage._captioners["fixed_test"].TEXTS = ["colin powell in a suit and tie"]
    image = np.zeros((8, 8, 3), np.uint8)
    (res,) = stage.process([Sample(key="a", identity="Colin_Powell", image=image)])
    assert res.columns["captions"] == ["a person in a suit and tie"]
    stage.remove_names = False
    (res,) = stage.process([Sample(key="a", identity="Colin_Powell", image=image)])
    assert res.columns["captions"] == ["colin powell in a suit and tie"]


def test_git_captioner_with_prompt(models, faces):
    stage = Caption(captioners=["git_base"], model_paths={"git_base": str(models["git_base"])},
                    clip_model=str(models["clip"]), device="cpu", prompt="a photo of", n_beam=1,
                    n_sample=1, num_beams=2, max_new_tokens=5, min_score=-1)
    stage.check()
    results = stage.process(faces[:2])
    for res in results:
        assert res.status == OK
        assert all(raw.startswith("a photo of") for raw in res.columns["candidate_raw"])
        assert res.columns["candidate_sources"] == ["git_base:beam", "git_base:sample"]


def test_columns_of_empty_candidates():
    c = caption_columns(["[unused0]"], [""], [None], ["blip_base:beam"], "clip", 3, 0.0)
    assert c["captions"] == [] and c["subject_spans"] == [] and c["candidate_scores"] == [None]


def test_bad_config_raises(models):
    ok = dict(clip_model=str(models["clip"]), model_paths={"blip_base": str(models["blip_base"]),
                                                          "blip_large": str(models["blip_large"])})
    for bad in (dict(captioners=[]), dict(captioners=["nope"]), dict(captioners=["blip_base", "blip_base"]),
                dict(n_beam=4, num_beams=3), dict(n_beam=0, n_sample=0), dict(top_p=0.0), dict(k=0),
                dict(min_score=2.0), dict(device="gpu"), dict(dtype="int8"), dict(batch_size=-1),
                dict(model_paths={"blip_typo": "x"})):
        with pytest.raises(ValueError):
            Caption(**{**ok, **bad}).check()


def test_missing_models_stop_check(tmp_path, models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # restored afterwards; the stage sets it when unset
    missing = tmp_path / "no_such_snapshot"
    with pytest.raises(FileNotFoundError, match="blip_base.*no_such_snapshot"):
        Caption(model_paths={"blip_base": str(missing)}, captioners=["blip_base"],
                clip_model=str(models["clip"])).check()
    with pytest.raises(FileNotFoundError, match="faceweave-test/not-cached.*allow_download"):
        Caption(captioners=["blip_base"], model_paths={"blip_base": str(models["blip_base"])},
                clip_model="faceweave-test/not-cached", weights_dir=str(tmp_path)).check()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a complete model directory"):
        Caption(captioners=["blip_base"], model_paths={"blip_base": str(empty)},
                clip_model=str(models["clip"])).check()


def test_hf_id_from_weights_dir_and_hf_cache(tmp_path, models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a snapshot copied to <weights dir>/<org>/<name>
    shutil.copytree(models["blip_base"], tmp_path / "w" / "Salesforce" / "blip-image-captioning-base")
    stage = Caption(captioners=["blip_base"], clip_model="openai/clip-vit-large-patch14",
                    weights_dir=str(tmp_path / "w"))
    # the same CLIP laid out as a Hugging Face cache: snapshots/<commit>/ files linking to blobs/<sha256>
    import huggingface_hub.constants as hf_constants

    repo = tmp_path / "hub" / "models--openai--clip-vit-large-patch14"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in models["clip"].iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / "blobs" / digest)
        (snapshot / f.name).symlink_to(repo / "blobs" / digest)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    stage.check()
    dirs = stage._dirs()
    assert dirs["blip_base"] == tmp_path / "w" / "Salesforce" / "blip-image-captioning-base"
    assert dirs[""] == snapshot
    prov = stage.provenance()
    assert f"clip=openai/clip-vit-large-patch14@{commit}" in prov.weights and prov.weights_random
    assert caps.weights_sha256(snapshot) == caps.weights_sha256(models["clip"])  # blob names = sha256


def test_pipeline_run_writes_caption_manifest(casia_tree, models, tmp_path):
    from pipeline.config import resolve
    from pipeline.core.runner import run

    out = tmp_path / "out"
    sets = [f"caption.model_paths={{blip_base: '{models['blip_base']}'}}", "caption.captioners=[blip_base]",
            f"caption.clip_model={models['clip']}", "caption.device=cpu", "caption.min_score=-1.0",
            "caption.max_new_tokens=6", "caption.n_beam=1", "caption.n_sample=1", "caption.num_beams=1"]
    cfg = resolve(flags={"source": "casia-webface", "input": str(casia_tree), "out": str(out),
                         "stages": "caption", "executor": "local", "shard_size": 8}, sets=sets)
    run(cfg, quiet=True)
    rows = [r for p in sorted((out / "manifests" / "caption").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    ok = [r for r in rows if r["status"] == OK]
    assert len(ok) >= 9 and all(r["weights_random"] for r in ok)
    assert all(len(r["candidates"]) == 2 and r["captions"] for r in ok)


def test_blip_shared_encoder_matches_hf_generate(models, faces):
    import torch

    captioner = caps.BlipCaptioner(num_beams=3)
    captioner.load(models["blip_large"], torch.device("cpu"), torch.float32)
    images = [f.image for f in faces[:2]]
    for prompt in ("", "a photo of"):
        ours = captioner.generate(images, n_beam=2, n_sample=0, prompt=prompt, max_new_tokens=6)
        inputs = captioner.processor(images=images, text=[prompt] * 2 if prompt else None, return_tensors="pt")
        out = captioner.model.generate(**inputs, num_beams=3, num_return_sequences=2, max_new_tokens=6)
        theirs = captioner.processor.tokenizer.batch_decode(out, skip_special_tokens=True)
        assert [t for per_image in ours for t in per_image] == [t.strip() for t in theirs]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_runs_and_scores_like_cpu(models, faces, captioned):
    cpu_stage, cpu_results = captioned
    stage = tiny_stage(models, device="cuda", dtype="bf16")
    results = stage.process(faces)
    table = validate_columns(manifest_rows(stage, faces, results), manifest_schema(stage.schema))
    assert table.num_rows == len(faces)
    # the beam captions of random tiny models may differ in bf16; the scores of the same texts must not
    cuda_scorer = stage._scorer
    for sample, res in zip(faces, cpu_results):
        texts = [t for t in res.columns["candidates"] if t]
        ours = cuda_scorer.score([sample.image], [texts])[0]
        theirs = cpu_stage._scorer.score([sample.image], [texts])[0]
        assert np.allclose(ours, theirs, atol=0.03)
