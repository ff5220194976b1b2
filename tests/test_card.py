"""``pipeline card OUT``: the Hugging Face dataset card, on a real lite run (casia-webface layout).

One small lite run (2 identities x 2 lfw10 photos) per module, audited against a copy of
itself so the card has leaks to report; the HF export's card is loaded by ``datasets``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.readers import card
from pipeline.cli import app
from tests.conftest import make_casia_tree


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("card")
    tree = make_casia_tree(base / "CASIA-WebFace", n_people=2, n_photos=2)
    out = base / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--source", "casia-webface", "--input", str(tree), "--out", str(out),
                                 "--preset", "lite", "--executor", "local", "-q"])
    assert result.exit_code == 0, result.output
    other = base / "other"
    shutil.copytree(out, other)
    result = runner.invoke(app, ["audit", str(out), "--against", str(other)])
    assert result.exit_code == 0, result.output
    return out


def _split(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


def test_card_header_parses_and_every_stage_appears(out):
    result = CliRunner().invoke(app, ["card", str(out)])
    assert result.exit_code == 0, result.output
    header, body = _split((out / card.CARD).read_text())
    assert header["license"] == "other" and header["license_name"] == "casia-webface-terms"
    assert header["size_categories"] == ["n<1K"] and "text-to-image" in header["task_categories"]
    assert header["configs"][0]["data_files"][0] == {"split": "train", "path": "shards/*.tar"}
    assert header["dataset_info"]["splits"][0]["num_examples"] == 4
    features = {f["name"]: f for f in header["dataset_info"]["features"]}
    assert features["jpg"]["dtype"] == "image" and features["id.npy"] == {"name": "id.npy", "sequence": "float32"}
    sections = {f["name"] for f in features["json"]["struct"]}
    run_stages = yaml.safe_load((out / "config.yaml").read_text())["stages"]
    for stage in run_stages:
        assert f"| {stage} |" in body  # counts table
        assert f"| `{stage}` |" in body  # models table
        assert (stage if stage != "identity" else "identity_embedding") in sections
    assert "mobilefacenet" in body and "Apache-2.0 (foamliu/MobileFaceNet)" in body
    assert "CASIA" in body.split("## Licence", 1)[1]
    leaks = body.split("Leakage into other output folders", 1)[1]
    assert "| 2 | 2 | 4 | 0 |" in leaks  # against its own copy: 2 identities, 2 pairs, 4 exact photos


def test_hf_export_includes_a_card_datasets_reads(out, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from pipeline.readers.export import export

    export(out, "hf", tmp_path / "hf")
    header, body = _split((tmp_path / "hf" / card.CARD).read_text())
    assert header["configs"][0]["data_files"][0]["path"] == "train-*.tar"
    assert '"url": "train-00000.tar", "nsamples": 4' in body
    ds = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 4 and isinstance(ds.features["jpg"], datasets.Image)
    assert ds.features["json"]["audit"]["outlier"].dtype == "bool"


def test_size_categories_and_licences():
    assert card.size_category(999) == "n<1K" and card.size_category(1000) == "1K<n<10K"
    assert card.size_category(494_414) == "100K<n<1M"
    assert card.model_license("lightweight_headpose:lightweight_headpose_b66").startswith("MIT")
    assert card.model_license("mediapipe_face_mesh").startswith("Apache-2.0")
    assert card.model_license("nothing") == "not in the weights registry"
