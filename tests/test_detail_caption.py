"""detail_caption: a tiny random Qwen2-VL saved offline, word limits, and region tagging on fixed text."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import schemas.detail_caption as ds
from pipeline.core.manifest import validate_columns
from schemas.common import manifest_schema
from schemas.parsing import CLASSES
from stages import regions
from stages.base import ERROR, OK, Sample
from stages.captioners import RANDOM_MARKER
from stages.detail_caption import DetailCaption, limit_words

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_qwen2_vl(directory: Path, seed: int = 0) -> Path:
    """A random Qwen2-VL (2 layers, width 32) with a byte-level tokenizer, saved like a snapshot."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}, merges=[]))
    backend.pre_tokenizer, backend.decoder = ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    ids = dict(zip(SPECIALS, tokenizer.convert_tokens_to_ids(SPECIALS)))
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
                         bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).eval().save_pretrained(directory)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
                                 tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                                 chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(directory)
    (directory / RANDOM_MARKER).write_text("random Qwen2-VL tiny weights built by tests/test_detail_caption.py\n")
    return directory


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> Path:
    return save_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "qwen2vl")


def tiny_stage(vlm_dir: Path, **kw) -> DetailCaption:
    values = dict(model=str(vlm_dir), device="cpu", max_new_tokens_short=6, max_new_tokens_detail=12,
                  image_size=112, batch_size=2)
    return DetailCaption(**{**values, **kw})


def test_tiny_vlm_end_to_end(vlm_dir):
    stage = tiny_stage(vlm_dir)
    stage.check()
    rng = np.random.default_rng(0)
    batch = [Sample(key=f"k{i}", identity="Colin_Powell", image=rng.integers(0, 255, (96 + 40 * i, 96, 3), np.uint8),
                    frame="aligned") for i in range(3)]
    batch.append(Sample(key="bad", identity="x", image=None))
    results = stage.process(batch)
    assert [r.status for r in results] == [OK, OK, OK, ERROR]
    prov = stage.provenance()
    assert prov.weights_random and prov.model == f"vlm={vlm_dir}" and len(prov.weights_sha256) == 64
    rows = []
    for sample, res in zip(batch, results):
        c = res.columns
        if res.status == OK:
            assert isinstance(c["short_caption_raw"], str) and isinstance(c["detail_raw"], str)
            assert len(c["detail_sentences"]) == len(c["detail_regions"]) == len(c["detail_parsing"])
            assert len(c["short_caption"].split()) <= stage.max_words
        row = {n: None for n in stage.schema.names}
        row.update(c)
        row.update(key=sample.key, status=res.status, error=res.error, duration_s=0.0, stage=stage.name,
                   stage_version=stage.version, frame=sample.frame, model=prov.model,
                   weights_sha256=prov.weights_sha256, weights_random=prov.weights_random, config_hash="x")
        rows.append(row)
    assert validate_columns(rows, manifest_schema(ds.SCHEMA)).num_rows == 4
    again = tiny_stage(vlm_dir).process(batch[:1])[0].columns  # greedy: reruns give the same text
    assert again["short_caption_raw"] == results[0].columns["short_caption_raw"]


def test_columns_clean_names_and_tag_sentences(vlm_dir):
    stage = tiny_stage(vlm_dir)
    cols = stage.columns("Colin Powell smiles warmly.\n" + "word " * 80,
                         "Colin Powell has brown eyes. His gray hair is short.\n- **Facial Hair:** none.",
                         ["Colin Powell"])
    assert "Powell" not in cols["short_caption"] and cols["short_truncated"]
    assert cols["short_caption"].endswith("warmly.") and len(cols["short_caption"].split()) <= 70
    assert "Powell" not in cols["detail"] and cols["detail_raw"].startswith("Colin Powell")
    assert cols["detail_sentences"][-1] == "facial hair: none."  # a heading, not a name
    assert cols["detail_regions"] == [["eyes"], ["hair"], ["beard"]]
    assert cols["detail_parsing"] == [["l_eye", "r_eye"], ["hair"], ["skin"]]


def test_limit_words():
    assert limit_words("a short caption.", 70) == ("a short caption.", False)
    long = " ".join(["word"] * 10)
    assert limit_words(long, 4) == ("word word word word.", True)
    assert limit_words("One two. Three four five six.", 4) == ("One two.", True)
    assert limit_words("One two three four. Five six.", 4) == ("One two three four.", True)


def test_config_checks(tmp_path, vlm_dir):
    with pytest.raises(FileNotFoundError, match="detail_caption model"):
        DetailCaption(model=str(tmp_path / "absent")).check()
    with pytest.raises(ValueError):
        tiny_stage(vlm_dir, max_words=0).check()
    with pytest.raises(ValueError):
        tiny_stage(vlm_dir, short_prompt=" ").check()


def test_region_tagging_on_fixed_sentences():
    paragraph = ("The person has deep-set brown eyes with long lashes. Thick eyebrows arch over them.\n"
                 "- **Nose:** straight, with a narrow bridge of the nose.\n"
                 "2. Facial hair: a trimmed beard and mustache cover the chin and jawline.\n"
                 "The skin is fair with freckles on the cheeks; a scar crosses the forehead, e.g. near the temple. "
                 "He wears glasses, a cap and small earrings. The photo is well lit.")
    sentences, tags, parsing = regions.tag_paragraph(paragraph)
    assert sentences[2] == "Nose: straight, with a narrow bridge of the nose."
    assert tags == [["eyes"], ["brows"], ["nose"], ["beard", "chin_jaw"], ["skin", "cheeks", "forehead"],
                    ["glasses", "earrings", "hat"], []]
    assert parsing[0] == ["l_eye", "r_eye"] and parsing[3] == ["skin"] and parsing[-1] == []
    assert parsing[5] == ["eye_g", "ear_r", "hat"]
    assert regions.tag_regions("Brown hair, no beard, clean-shaven.") == ["hair", "beard"]
    assert regions.tag_regions("Her lips are red and her smile shows teeth.") == ["mouth", "lips"]
    assert regions.tag_regions("A brownish background; the hairdresser's shop.") == []


def test_region_map_uses_parsing_class_names():
    assert set(regions.REGION_PARSING) == set(regions.REGIONS)
    for classes in regions.REGION_PARSING.values():
        assert classes and set(classes) <= set(CLASSES) - {"background"}
    terms = [t for ts in regions.REGIONS.values() for t in ts]
    assert len(terms) == len(set(terms))  # each term belongs to one region


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_batches(vlm_dir):
    stage = tiny_stage(vlm_dir, device="cuda", dtype="bf16", batch_size=4)
    rng = np.random.default_rng(1)
    batch = [Sample(key=f"k{i}", identity="x", image=rng.integers(0, 255, (128, 128, 3), np.uint8)) for i in range(6)]
    results = stage.process(batch)
    assert all(r.status == OK for r in results)
    assert stage._vlm.model.dtype == torch.bfloat16
