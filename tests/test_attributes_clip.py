"""attributes' CLIP groups (tiny random CLIP), CelebA ground truth, accuracy, caption emotion words."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import schemas.attribute_prompts as prompts
import schemas.attributes as aschema
from pipeline.core.manifest import validate_columns
from schemas.common import manifest_schema
from stages.attributes import Attributes, celeba_ground_truth, expand_groups
from stages.models.fairface import FAIRFACE
from stages.base import ERROR, OK, Result, Sample
from stages.models import registry
from tests.fixtures import tiny_hf

LFW = Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw10"
N_ATTR = len(aschema.CELEBA_ATTRIBUTES)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tiny_hf.save_clip(tmp_path_factory.mktemp("clip") / "clip", seed=5)


def faces(n: int) -> list[np.ndarray]:
    if not LFW.is_dir():
        pytest.skip(f"real faces missing: {LFW}")
    return [np.array(Image.open(p).convert("RGB")) for p in sorted(LFW.glob("*/*_0001.jpg"))[:n]]


def celeba_meta(value: bool) -> dict:
    gt = {name: value for name in aschema.CELEBA_ATTRIBUTES[:-1]}  # "Young" left out
    return {"location": "img_align_celeba/000001.jpg", "meta": json.dumps({"celeba_attributes": gt})}


def rows_of(stage, batch, results) -> list[dict]:
    prov = stage.provenance()
    rows = []
    for sample, res in zip(batch, results):
        row = {name: None for name in stage.schema.names}
        if res.status == OK:
            row.update(res.columns)
        row.update(key=sample.key, status=res.status, error=res.error, duration_s=0.0, stage=stage.name,
                   stage_version=stage.version, frame=sample.frame, model=prov.model,
                   weights_sha256=prov.weights_sha256, weights_random=prov.weights_random, config_hash="x")
        rows.append(row)
    return rows


def test_prompt_sets_cover_every_class():
    assert len(aschema.CELEBA_ATTRIBUTES) == len(set(aschema.CELEBA_ATTRIBUTES)) == 40
    assert list(prompts.CELEBA_PROMPTS) == list(aschema.CELEBA_ATTRIBUTES)
    assert set(prompts.AGE_PROMPTS) == set(aschema.AGE_BINS) == set(aschema.AGE_RANGES)
    assert set(prompts.GENDER_PROMPTS) == set(aschema.GENDERS)
    for pos, neg in prompts.CELEBA_PROMPTS.values():
        assert pos and neg and set(pos).isdisjoint(neg)


def test_groups_expand_and_refuse_unknown():
    assert expand_groups(["clip_attributes", "emotion"]) == ("emotion", "age", "gender", "celeba")
    assert expand_groups(["celeba"]) == ("celeba",)
    with pytest.raises(ValueError, match="unknown attribute group"):
        expand_groups(["hair"])


def test_clip_groups_columns_and_ground_truth(clip_dir):
    stage = Attributes(groups=["emotion", "clip_attributes"], clip_model=str(clip_dir), device="cpu",
                       weights="random", batch_size=2)
    stage.check()
    imgs = faces(3)
    batch = [Sample(key=f"k{i}", identity="x", image=im, frame="aligned") for i, im in enumerate(imgs)]
    batch[0].meta = celeba_meta(True)
    batch.append(Sample(key="bad", identity="x", image=None))
    results = stage.process(batch)
    assert [r.status for r in results] == [OK, OK, OK, ERROR]
    prov = stage.provenance()
    assert prov.weights_random and "clip=" in prov.model and len(prov.weights_sha256) == 64
    for r in results[:3]:
        c = r.columns
        assert len(c["age_probs"]) == 5 and abs(sum(c["age_probs"]) - 1) < 1e-4
        assert len(c["gender_probs"]) == 2 and abs(sum(c["gender_probs"]) - 1) < 1e-4
        assert c["age_label"] in (*aschema.AGE_BINS, aschema.UNCERTAIN)
        assert c["gender_label"] in (*aschema.GENDERS, aschema.UNCERTAIN)
        probs = np.array(c["celeba_probs"])
        assert probs.shape == (N_ATTR,) and np.all((probs >= 0) & (probs <= 1))
        assert c["celeba_labels"] == [bool(p >= 0.5) for p in probs]
        assert c["attributes_clip_model"] == str(clip_dir) and len(c["emotion_probs"]) == 7
    gt = results[0].columns["celeba_gt"]
    assert gt[:-1] == [True] * (N_ATTR - 1) and gt[-1] is None
    labels = results[0].columns["celeba_labels"][:-1]
    assert results[0].columns["celeba_gt_agreement"] == pytest.approx(np.mean(labels))
    assert results[1].columns["celeba_gt"] is None and results[1].columns["celeba_gt_agreement"] is None
    table = validate_columns(rows_of(stage, batch, results), manifest_schema(aschema.SCHEMA))
    report = {r["attribute"]: r for r in aschema.celeba_accuracy(table)}
    assert report["Young"]["n"] == 0 and report["Young"]["accuracy"] is None
    assert report["Male"]["n"] == 1
    assert report["Male"]["accuracy"] == float(results[0].columns["celeba_labels"][20])


def test_source_frame_view_uses_detect_box(clip_dir):
    stage = Attributes(groups=["gender"], clip_model=str(clip_dir), device="cpu")
    img = np.zeros((300, 400, 3), np.uint8)
    det = Result(columns={"box": [100.0, 100.0, 160.0, 180.0]})
    view = stage.clip_view(Sample(key="k", identity="x", image=img, upstream={"detect": det}))
    assert view.shape == (160, 160, 3)  # 2 x the box's longer side
    assert stage.clip_view(Sample(key="k", identity="x", image=img)).shape == img.shape


def test_emotion_only_default_loads_no_clip():
    stage = Attributes(device="cpu")
    stage.check()
    (res,) = stage.process([Sample(key="k", identity="x", image=np.full((96, 96, 3), 90, np.uint8))])
    assert res.status == OK and "celeba_probs" not in res.columns and stage._clip is None


def test_config_errors(tmp_path, monkeypatch, clip_dir):
    with pytest.raises(FileNotFoundError, match="clip_model"):
        Attributes(groups=["age"], clip_model=str(tmp_path / "absent")).check()
    with pytest.raises(ValueError, match="celeba_threshold"):
        Attributes(groups=["celeba"], clip_model=str(clip_dir), celeba_threshold=1.0).check()
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path))
    with pytest.raises(registry.MissingWeights, match="FairFace"):
        Attributes(groups=["age"], age_gender_model=FAIRFACE).check()
    (tmp_path / registry.get(FAIRFACE).filename).write_bytes(b"x")
    with pytest.raises(NotImplementedError, match="no loader"):
        Attributes(groups=["age"], age_gender_model=FAIRFACE).check()


def test_ground_truth_parsing():
    assert celeba_ground_truth({}) is None
    assert celeba_ground_truth({"meta": "{}"}) is None
    assert celeba_ground_truth({"meta": "not json"}) is None
    gt = celeba_ground_truth({"meta": {"celeba_attributes": {"Male": True, "Smiling": False}}})
    assert gt[aschema.CELEBA_ATTRIBUTES.index("Male")] is True
    assert gt[aschema.CELEBA_ATTRIBUTES.index("Smiling")] is False and gt.count(None) == N_ATTR - 2


def test_accuracy_rethresholds_and_ignores_failed_rows():
    probs = [[0.9] * N_ATTR, [0.2] * N_ATTR, [0.9] * N_ATTR]
    table = pa.table({
        "status": ["ok", "ok", "error"],
        "celeba_probs": pa.array(probs, pa.list_(pa.float32())),
        "celeba_labels": pa.array([[p >= 0.5 for p in row] for row in probs], pa.list_(pa.bool_())),
        "celeba_gt": pa.array([[True] * N_ATTR, [True] * N_ATTR, [False] * N_ATTR], pa.list_(pa.bool_())),
    })
    report = aschema.celeba_accuracy(table)
    assert all(r["n"] == 2 and r["accuracy"] == 0.5 and r["gt_positive"] == 1.0 for r in report)
    assert all(r["accuracy"] == 1.0 for r in aschema.celeba_accuracy(table, threshold=0.1))


def test_caption_emotion_words():
    assert aschema.emotion_in_text("a smiling man in a suit") == "happy"
    assert aschema.emotion_in_text("a man in a suit") is None
    assert aschema.insert_emotion_word("a man in a suit", [2, 5], "angry") == ("an angry man in a suit", [9, 12])
    assert aschema.insert_emotion_word("An old man", [7, 10], "sad") == ("An old sad man", [11, 14])
    assert aschema.insert_emotion_word("A man", [2, 5], "happy") == ("A happy man", [8, 11])
    assert aschema.insert_emotion_word("no subject", [-1, -1], "sad") == ("no subject", [-1, -1])
    caps, spans, cols = aschema.caption_emotion_columns(
        ["a smiling woman", "a woman with glasses", "a sad woman"], [[10, 15], [2, 7], [6, 11]], "happy", True)
    assert caps == ["a smiling woman", "a happy woman with glasses", "a sad woman"]
    assert spans[1] == [8, 13] and caps[1][8:13] == "woman"
    assert cols == {"attributes_emotion": "happy", "caption_emotions": ["happy", "happy", "sad"],
                    "caption_emotion_agrees": [True, True, False], "emotion_word_added": [False, True, False]}
    _, _, cols = aschema.caption_emotion_columns(["a sad man"], [[6, 9]], aschema.UNCERTAIN, True)
    assert cols["caption_emotion_agrees"] == [None] and cols["emotion_word_added"] == [False]
    _, _, cols = aschema.caption_emotion_columns(["a man"], [[2, 5]], None, True)
    assert cols["attributes_emotion"] is None and cols["caption_emotions"] == [""]


def test_caption_stage_reads_attributes_emotion(tmp_path, clip_dir):
    from stages.caption import Caption

    blip = tiny_hf.save_blip(tmp_path / "blip", seed=1)
    stage = Caption(captioners=["blip_base"], model_paths={"blip_base": str(blip)}, clip_model=str(clip_dir),
                    device="cpu", min_score=-1.0, max_new_tokens=6, n_beam=1, n_sample=1, num_beams=1,
                    emotion_word=True)
    stage.check()
    attrs = Result(columns={"emotion": "surprise"})
    img = faces(1)[0]
    unsure = Result(columns={"emotion": "surprise", "emotion_confident": False})
    with_attr, without, low = stage.process([
        Sample(key="a", identity="x", image=img, upstream={"attributes": attrs}),
        Sample(key="b", identity="x", image=img), Sample(key="c", identity="x", image=img, upstream={"attributes": unsure})])
    assert with_attr.columns["attributes_emotion"] == "surprise"
    assert without.columns["attributes_emotion"] is None
    assert low.columns["attributes_emotion"] == aschema.UNCERTAIN and not any(low.columns["emotion_word_added"])
    for res in (with_attr, without):
        c = res.columns
        assert len(c["caption_emotions"]) == len(c["captions"]) == len(c["emotion_word_added"])
        for caption, added, (start, end), word in zip(c["captions"], c["emotion_word_added"],
                                                      c["subject_spans"], c["subject_words"]):
            assert not added or "surprised" in caption
            assert start < 0 or caption[start:end] == word
    validate_columns(rows_of(stage, [Sample(key="a", identity="x", image=img)], [with_attr]),
                     manifest_schema(stage.schema))


def test_runner_writes_clip_attributes_and_quality(casia_tree, clip_dir, tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    import schemas.quality as qs
    from pipeline.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "run", "--source", "casia-webface", "--input", str(casia_tree), "--out", str(out),
        "--preset", "lite", "--stages", "detect,attributes,quality", "--executor", "local", "--shard-size", "8",
        "--set", "attributes.groups=[emotion, clip_attributes]", "--set", f"attributes.clip_model={clip_dir}",
        "--set", "attributes.device=cpu", "--set", "detect.device=cpu"])
    assert result.exit_code == 0, result.output
    for stage, schema in (("attributes", aschema.SCHEMA), ("quality", qs.SCHEMA)):
        table = pq.read_table(out / "manifests" / stage)
        assert table.schema.equals(manifest_schema(schema)), stage
        ok = [r for r in table.to_pylist() if r["status"] == "ok"]
        assert len(ok) == 9, stage  # the 3 x 3 real photos
    rows = [r for r in pq.read_table(out / "manifests" / "attributes").to_pylist() if r["status"] == "ok"]
    assert all(len(r["celeba_probs"]) == N_ATTR and r["weights_random"] for r in rows)
    rows = [r for r in pq.read_table(out / "manifests" / "quality").to_pylist() if r["status"] == "ok"]
    assert all(r["frame"] == "aligned" and r["interocular_px"] > 8 and r["n_faces"] >= 1 for r in rows)
    # the source step read the quality from each file's quantisation tables (lfw10 is saved at 90)
    assert all(0 < r["face_area_ratio"] < 1 and r["jpeg_quality_method"] == "dqt" for r in rows)
    assert {r["jpeg_quality"] for r in rows} == {90}


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_clip_matches_cpu(clip_dir):
    batch = [Sample(key=f"k{i}", identity="x", image=im, frame="aligned") for i, im in enumerate(faces(4))]
    probs = {}
    for device, dtype in (("cpu", "fp32"), ("cuda", "bf16")):
        stage = Attributes(groups=["clip_attributes"], clip_model=str(clip_dir), device=device, dtype=dtype)
        probs[device] = np.array([r.columns["celeba_probs"] for r in stage.process(batch)])
    assert np.abs(probs["cuda"] - probs["cpu"]).max() < 0.05


def test_celeba_ground_truth_accuracy_in_the_stats(clip_dir, tmp_path):
    """celeba source: the ground-truth attributes travel along; the stats report per-attribute accuracy."""
    import json
    import shutil

    from pipeline.config import resolve
    from pipeline.core.runner import run
    from schemas.attributes import CELEBA_ATTRIBUTES
    from tests.conftest import lfw_people

    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    photos = [p for _, ps in lfw_people(2, 2) for p in ps]
    ident, attrs = [], [str(len(photos)), " ".join(CELEBA_ATTRIBUTES)]
    for i, photo in enumerate(photos, 1):
        shutil.copyfile(photo, root / "img_align_celeba" / f"{i:06d}.jpg")
        ident.append(f"{i:06d}.jpg {1 + (i - 1) // 2}")
        attrs.append(f"{i:06d}.jpg " + " ".join("1" if (i + j) % 3 == 0 else "-1" for j in range(len(CELEBA_ATTRIBUTES))))
    (root / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")
    (root / "list_attr_celeba.txt").write_text("\n".join(attrs) + "\n")
    out = tmp_path / "out"
    run(resolve(flags={"source": "celeba", "input": str(root), "out": str(out), "stages": "attributes",
                       "executor": "local"},
                sets=["attributes.groups=[celeba]", f"attributes.clip_model={clip_dir}", "attributes.device=cpu"]),
        quiet=True)
    extra = json.loads((out / "stats" / "attributes" / "00000.json").read_text())["extra"]
    assert extra["celeba_samples"] == len(photos)
    assert set(extra["celeba_accuracy"]) == set(CELEBA_ATTRIBUTES)
    assert all(0.0 <= a <= 1.0 for a in extra["celeba_accuracy"].values())
