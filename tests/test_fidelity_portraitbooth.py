"""PortraitBooth's paper defaults: emotion words and man/woman tokens in the prompts, shallow STEA
features from the shards' recogniser, and an ECAC localization loss that reaches the attention."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from schemas.attributes import CELEBA_ATTRIBUTES, EMOTIONS
from training.data import DataConfig, make_prompt, word_span
from training.portraitbooth import PortraitBooth, PortraitBoothConfig, recogniser_of
from training.portraitbooth_blocks import SHALLOW_LAYERS, FaceEmbedder
from training.prompts import (PAPER_EMOTION_WORDS, SOURCE_ATTRIBUTES, SOURCE_CAPTION, SOURCE_NONE, names_emotion,
                              prompt_word)
from training.sd import tiny_sd_components

PB = DataConfig(prompt_dropout=0.0, keep_subject=True)  # what the PortraitBooth trainer streams with


def meta(caption: str | None = None, span: tuple[int, int] = (-1, -1), **attributes) -> dict:
    m: dict = {"attributes": attributes} if attributes else {}
    if caption is not None:
        m["caption"] = {"captions": [caption], "subject_spans": [list(span)]}
    return m


def prompt(m: dict, cfg: DataConfig = PB):
    return make_prompt(m, random.Random(0), cfg)


def test_eleven_paper_emotion_words_cover_every_non_neutral_fer_class():
    assert len(PAPER_EMOTION_WORDS) == 11
    assert {prompt_word(c) for c in EMOTIONS} == {"happy", "angry", "sad", "surprised", "fearful", "disgusted", None}
    assert prompt_word("neutral") is None
    assert not names_emotion("a calm man") and names_emotion("a calm man", "synonyms")  # neutral words are out
    assert word_span("a crying man", tuple(PAPER_EMOTION_WORDS)) == (2, 8)


def test_confident_emotion_word_inserted_before_the_identity_token():
    p = prompt(meta("a woman in a hat", (2, 7), emotion="angry", emotion_confident=True, gender_label="female"))
    assert p.text == "an angry woman in a hat" and p.text[slice(*p.id_span)] == "woman"
    assert p.token_source == SOURCE_ATTRIBUTES
    for unsure in ({"emotion_confident": False}, {}):  # a row without the column is not confident
        p = prompt(meta("a woman in a hat", (2, 7), emotion="angry", gender_label="female", **unsure))
        assert p.text == "a woman in a hat"
    assert prompt(meta("a woman in a hat", (2, 7), emotion="angry", emotion_confident=True),
                  replace(PB, emotion_word=False)).text == "a woman in a hat"
    named = prompt(meta("a smiling woman", (10, 15), emotion="sad", emotion_confident=True))
    assert named.text == "a smiling woman"  # the caption's own expression word stays


def test_identity_token_is_man_or_woman_with_its_source():
    p = prompt(meta("a person on a beach", (2, 8), gender_label="male"))
    assert (p.text, p.token_source) == ("a man on a beach", SOURCE_ATTRIBUTES)
    p = prompt(meta("a girl on a beach", (2, 6), gender_label="uncertain"))
    assert (p.text, p.token_source) == ("a woman on a beach", SOURCE_CAPTION)
    p = prompt(meta("a person on a beach", (2, 8)))
    assert (p.text, p.token_source) == ("a person on a beach", SOURCE_NONE)
    kept = prompt(meta("a girl on a beach", (2, 6), gender_label="male"), replace(PB, subject_token="caption"))
    assert kept.text == "a girl on a beach" and kept.id_span == (2, 6)
    dense = prompt(meta("a girl on a beach", (2, 6), gender_label="male"), DataConfig(prompt_dropout=0.0))
    assert dense.text == "a face on a beach"  # Dense-Face's identity word is unchanged


def test_caption_stage_inserts_only_confident_emotion_words():
    from stages.caption import Caption, confident

    assert Caption().emotion_word is True
    assert confident({"emotion": "happy", "emotion_confident": True})
    assert not confident({"emotion": "happy"}) and not confident({"emotion_confident": False}) and not confident(None)


def test_caption_less_samples_get_a_prompt_from_their_labels():
    labels = [name == "Eyeglasses" for name in CELEBA_ATTRIBUTES]
    p = prompt(meta(emotion="happy", emotion_confident=True, gender_label="female", celeba_labels=labels))
    assert p.text == "a photo of a happy woman wearing glasses" and p.text[slice(*p.id_span)] == "woman"
    assert word_span(p.text, tuple(PAPER_EMOTION_WORDS)) == (13, 18)
    p = prompt(meta(emotion="angry", emotion_confident=True))
    assert p.text == "a photo of an angry person"
    assert prompt({}).text == "a photo of a person"  # no labels at all: the fallback caption
    with pytest.raises(ValueError):
        prompt({}, replace(PB, subject_token="he/she"))


def test_shallow_features_by_default_from_the_shards_recogniser():
    cfg = PortraitBoothConfig()
    assert (cfg.face_feature, cfg.shallow_layer, cfg.id_net) == ("shallow", "", "")
    assert recogniser_of("arcface_irse50") == "arcface_irse50" and recogniser_of("mobilefacenet") == "mobilefacenet"
    assert recogniser_of("") == recogniser_of("no_such_model") == "mobilefacenet"
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    for name in ("mobilefacenet", "arcface_irse50"):
        net = FaceEmbedder(name, "random")
        assert net.shallow(faces, "", 4).shape == (2, 64 * 16), name  # first 56x56 stage, 4x4 average pool
        assert SHALLOW_LAYERS[net.family] in dict(net.net.named_modules())
    model = PortraitBooth(tiny_sd_components(), PortraitBoothConfig(mlp_hidden=32, embedder="arcface_irse50",
                                                                      id_net_weights="random"))
    assert model.cfg.id_net == "arcface_irse50" and model.id_net.name == "arcface_irse50"
    assert model.subject_mlp.face_norm.normalized_shape == (1024,)


def synthetic_batch(n: int = 2) -> dict:
    """A batch as the stream yields it; faces are random (only the attention maps matter here)."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, 1, 64, 64)
    mask[:, :, 16:48, 16:48] = 1
    return {"image": torch.rand(n, 3, 64, 64, generator=g) * 2 - 1, "caption": ["a photo of a smiling man"] * n,
            "id_span": torch.tensor([[21, 24]] * n), "emotion_span": torch.tensor([[13, 20]] * n), "face_mask": mask,
            "points5": torch.full((n, 5, 2), float("nan")), "ref_face": torch.rand(n, 3, 112, 112, generator=g) * 2 - 1,
            "ref_embedding": torch.randn(n, 128, generator=g)}


def test_localization_loss_reaches_the_attention_and_falls_when_trained():
    """Eq. 7's two halves get gradients into the cross-attention projections; trained alone (weights
    x1000, the paper's 1e-3/1e-2 keep it ~5e-4, docs/training.md) the loss falls on a tiny model."""
    batch = synthetic_batch()
    model = PortraitBooth(tiny_sd_components(), PortraitBoothConfig(id_dim=128, mlp_hidden=32, embedder="mobilefacenet",
                                                                      loc_lambda=1.0, loc_mu=10.0)).train()
    d = model.draw(batch, 0)
    no = torch.zeros(2, dtype=torch.bool)
    d = replace(d, uncond=no, text_only=no, t=torch.tensor([300, 300]))
    out = model.forward_pass(batch, d)
    assert (out.positions[:, 0] == 6).all() and (out.positions[:, 1] == 5).all()  # "man", "smiling" tokens
    assert len(out.maps) == model.n_cross and all(m.shape[:2] == (2, 2) for m in out.maps)
    keys = [m.to_k.weight for n, m in model.unet.named_modules() if n.endswith("attn2")]
    for half in (0, 1):  # identity token, expression token
        from training.portraitbooth_blocks import localization_term

        term = localization_term([m[:, half] for m in out.maps], batch["face_mask"], 0.8).mean()
        grads = torch.autograd.grad(term, keys, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads), half
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = model.localization_loss(batch, model.forward_pass(batch, d))
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.97 * losses[0], losses
