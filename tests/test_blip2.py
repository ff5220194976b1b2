"""BLIP-2 captioners (OPT, FlanT5): registry pins, tiny random checkpoints through the caption stage,
and the full preset's candidate pool."""
from __future__ import annotations

import re

import numpy as np
import pytest

from stages import captioners as caps
from stages.base import Sample
from tests.fixtures import tiny_hf
from tests.fixtures.tiny_blip2 import save_blip2

BLIP2 = {"blip2_opt_2_7b": ("Salesforce/blip2-opt-2.7b", "opt"), "blip2_flan_t5_xl": ("Salesforce/blip2-flan-t5-xl", "t5")}


def test_registered_with_pinned_revisions():
    for name, (hub_id, _) in BLIP2.items():
        spec = caps.get(name)
        assert spec.cls is caps.Blip2Captioner and spec.default == hub_id
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision), name


def test_hub_lookup_asks_for_the_pinned_revision(monkeypatch, tmp_path):
    import huggingface_hub

    seen = {}

    def fake(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    spec = caps.get("blip2_opt_2_7b")
    with pytest.raises(FileNotFoundError, match=spec.revision):
        caps.resolve_location(spec.default, "caption captioner", weights_dir=tmp_path, revision=spec.revision)
    assert seen["repo_id"] == spec.default and seen["revision"] == spec.revision and seen["local_files_only"]


def test_caption_stage_runs_tiny_blip2_opt_and_t5(tmp_path):
    from stages.caption import Caption

    paths = {name: str(save_blip2(tmp_path / name, lang, seed=i)) for i, (name, (_, lang)) in enumerate(BLIP2.items())}
    clip = tiny_hf.save_clip(tmp_path / "clip", seed=4)
    stage = Caption(captioners=list(BLIP2), model_paths=paths, clip_model=str(clip), device="cpu", min_score=-1.0,
                    max_new_tokens=5, n_beam=1, n_sample=1, num_beams=2, k=3)
    stage.check()
    assert stage.revision("blip2_opt_2_7b") == ""  # a model_paths entry is used as given
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    results = stage.process([Sample(key=f"k{i}", identity="x", image=im) for i, im in enumerate(images)])
    for res in results:
        c = res.columns
        assert c["candidate_sources"] == ["blip2_opt_2_7b:beam", "blip2_opt_2_7b:sample",
                                          "blip2_flan_t5_xl:beam", "blip2_flan_t5_xl:sample"]
        assert len(c["candidate_raw"]) == 4 and all(isinstance(t, str) for t in c["candidate_raw"])
        assert not any("<image>" in t for t in c["candidate_raw"])  # the query placeholders are not text
    prov = stage.provenance()
    assert prov.weights_random and "blip2_flan_t5_xl=" in prov.weights


def test_full_preset_pool_attributes_and_emotion_word():
    from pipeline.config import resolve

    cfg = resolve(flags={"source": "sample", "out": "unused"})
    assert cfg.stages.index("attributes") < cfg.stages.index("caption")
    assert {"emotion", "gender"} <= set(cfg.stage_config["attributes"]["groups"])
    pool = cfg.stage_config["caption"]["captioners"]
    assert {"blip_base", "blip_large", *BLIP2} <= set(pool)
    assert cfg.stage_config["caption"]["emotion_word"] is True
