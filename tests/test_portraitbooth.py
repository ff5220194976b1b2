"""PortraitBooth on tiny SD components (built in code) and shards the pipeline made from real faces."""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stages.models import align
from stages.models import load
from tests.conftest import lfw_people
from tests.test_training_data import pipeline_output
from tests.trainer_runs import assert_bench_smoke, assert_bf16_on_gpu, unbroken_and_resumed
from training.data import DataConfig, FaceShardDataModule, make_caption, reference_face, word_span
from training.dense_face import OptimConfig
from training.infer_portraitbooth import InferenceConfig, ReferenceEncoder, generate, load_model, subject_span
from training.portraitbooth import TRAINABLE, PortraitBooth, PortraitBoothConfig
from training.portraitbooth_blocks import align_faces, localization_term
from training.sd import tiny_sd_components
from training.train import TRAINER_DEFAULTS, data_config, load_config, make

CAPTION = "a photo of a smiling man"  # smiling [13, 20), man [21, 24)
MAN, SMILING = (21, 24), (13, 20)


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return pipeline_output(tmp_path_factory.getbasetemp()) / "shards"


def tiny_model(**kw) -> PortraitBooth:
    cfg = dict(id_dim=128, mlp_hidden=32, embedder="mobilefacenet")
    return PortraitBooth(tiny_sd_components(), PortraitBoothConfig(**{**cfg, **kw})).train()


@pytest.fixture(scope="module")
def batch(shards) -> dict:
    data = replace(data_config(load_config("portraitbooth_tiny"), "person"), keep_subject=True, reference_face=True)
    return next(iter(FaceShardDataModule(shards, data).stream()))


def conditioned(model: PortraitBooth, batch: dict, t: int | list[int], **modes) -> object:
    """A draw with fixed timesteps; every sample fully conditioned unless ``modes`` say otherwise."""
    d = model.draw(batch, 0)
    n = len(d.t)
    flags = {k: torch.zeros(n, dtype=torch.bool) for k in ("uncond", "text_only")}
    flags.update({k: torch.tensor(v) for k, v in modes.items()})
    return replace(d, t=torch.tensor(t).expand(n).clone(), **flags)


def test_batch_has_subject_word_expression_and_reference_face(batch, shards):
    assert batch["ref_face"].shape == (2, 3, 112, 112)
    assert batch["points5"].shape == (2, 5, 2) and torch.isfinite(batch["points5"]).all()
    assert 0 < batch["points5"].min() and batch["points5"].max() < 64  # detect's points at 64 px
    assert batch["id_token_source"] == ["none", "none"]  # no attributes, no gendered caption word: "person"
    for cap, span, emo in zip(batch["caption"], batch["id_span"].tolist(), batch["emotion_span"].tolist()):
        assert cap[span[0]:span[1]] == "person" and cap[emo[0]:emo[1]] == "smiling"
    # the reference crop is the identity stage's alignment of the reference's shard image
    from training.pairs import load_index

    index = load_index(shards)
    row = index.row(batch["ref_key"][0])
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(index.read(row, "jpg"), np.uint8), cv2.IMREAD_COLOR),
                         cv2.COLOR_BGR2RGB)
    expected = reference_face(image, json.loads(index.read(row, "json")))
    got = ((batch["ref_face"][0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    assert np.array_equal(got, expected)


def test_data_defaults_unchanged_and_word_spans():
    meta = {"caption": {"captions": ["a happy woman in a hat"], "subject_spans": [[8, 13]]}}
    assert make_caption(meta, random.Random(0), DataConfig(prompt_dropout=0.0)) == ("a happy face in a hat", (8, 12))
    kept = DataConfig(prompt_dropout=0.0, keep_subject=True)
    assert make_caption(meta, random.Random(0), kept) == ("a happy woman in a hat", (8, 13))
    assert word_span("a Happy woman") == (2, 7) and word_span("a woman") == (-1, -1)
    assert word_span("unhappy") == (0, 7) and word_span("happyish man") == (-1, -1)  # whole words only
    assert subject_span("A Woman and a man", ("man", "woman")) == [2, 7]


def test_every_loss_term_finite_with_gradients_into_trainable_only(batch):
    model = tiny_model()
    out = model.training_step(batch, 0, draw=conditioned(model, batch, 100))
    terms = out["terms"]
    assert set(terms) == {"noise", "id", "loc"} and all(torch.isfinite(v) and v > 0 for v in terms.values())
    trainable = model.trainable_parameters()
    frozen = [p for m in (model.vae, model.text_encoder, model.id_net) for p in m.parameters()]
    assert all(not p.requires_grad for p in frozen)
    for name, term in terms.items():
        grads = torch.autograd.grad(term, trainable, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    out["loss"].backward()
    for part in TRAINABLE:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part
    assert all(p.grad is None for p in frozen)


def test_identity_loss_only_at_or_below_r_t(batch, monkeypatch):
    model = tiny_model(r_t=250)
    decoded = []
    decode = model.decode_latents
    monkeypatch.setattr(model, "decode_latents", lambda z: decoded.append(len(z)) or decode(z))
    assert model.training_step(batch, 0, draw=conditioned(model, batch, 251))["terms"]["id"] == 0
    assert decoded == []
    terms = model.training_step(batch, 0, draw=conditioned(model, batch, [250, 251]))["terms"]
    assert decoded == [1] and terms["id"] > 0
    grads = torch.autograd.grad(terms["id"], list(model.unet.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # text-only and unconditional samples have no reference conditioning, hence no identity loss
    skip = conditioned(model, batch, 0, uncond=[True, False], text_only=[False, True])
    assert model.training_step(batch, 0, draw=skip)["terms"]["id"] == 0 and decoded == [1]


def independent_maps(model: PortraitBooth, records: list, positions: list[int]) -> list[torch.Tensor]:
    """Head-averaged softmax(QK^T) columns of ``positions`` per cross-attention call, from its inputs."""
    maps = []
    for attn, hidden, context in records:
        q, k = attn.to_q(hidden), attn.to_k(context)
        b, n, heads = q.shape[0], q.shape[1], attn.heads
        q = q.view(b, n, heads, -1).transpose(1, 2)
        k = k.view(b, k.shape[1], heads, -1).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1).mean(1)  # (B, HW, L)
        side = int(n ** 0.5)
        maps.append(probs[:, :, positions].transpose(1, 2).reshape(b, len(positions), side, side))
    return maps


def test_localization_loss_uses_identity_and_expression_tokens(batch):
    model = tiny_model()
    b = {**batch, "caption": [CAPTION, CAPTION], "id_span": torch.tensor([MAN] * 2),
         "emotion_span": torch.tensor([SMILING] * 2)}
    text, pos = model.encode_text(b["caption"], b["id_span"], b["emotion_span"])
    ids = model.tokenizer(CAPTION).input_ids
    assert model.tokenizer.convert_ids_to_tokens([ids[pos[0, 0]], ids[pos[0, 1]]]) == ["man</w>", "smiling</w>"]
    records, hooks = [], []
    for module in model.unet.modules():
        if getattr(module, "is_cross_attention", False):
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, kw: records.append((m, args[0], kw["encoder_hidden_states"])), with_kwargs=True))
    d = conditioned(model, b, 500, uncond=[False, True])  # the second sample drops its caption
    out = model.forward_pass(b, d)
    for h in hooks:
        h.remove()
    assert out.positions[0].tolist() == pos[0].tolist() and out.positions[1].tolist() == [-1, -1]
    assert out.augmented.tolist() == [True, False] and len(out.maps) == model.n_cross == len(records)
    expected = independent_maps(model, records, pos[0].tolist())
    for got, want in zip(out.maps, expected):
        assert torch.allclose(got[0], want[0], atol=1e-5)
    c, mask = model.cfg, b["face_mask"]
    ident = localization_term([m[:1, 0] for m in expected], mask[:1], c.loc_beta)
    expr = localization_term([m[:1, 1] for m in expected], mask[:1], c.loc_gamma)
    by_hand = (c.loc_lambda * ident + c.loc_mu * expr) / 2  # the unconditional sample adds nothing
    assert torch.allclose(model.localization_loss(b, out), by_hand[0], atol=1e-6)


def test_localization_term_formula():
    a = torch.tensor([[[0.9, 0.0], [0.5, 0.2]]])  # (B=1, 2, 2) attention map
    m = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # face on the top row
    # background: mean(A (1 - M)) = (0.5 + 0.2) / 4; face: mean(relu(0.8 - A) M) = (0 + 0.8) / 4
    assert torch.allclose(localization_term([a], m, 0.8), torch.tensor([(0.7 + 0.8) / 4]))


def test_text_only_and_unconditional_fractions():
    model = tiny_model(p_text_only=0.1, p_uncond=0.1, p_face_loss=0.5)
    gen = torch.Generator().manual_seed(123)
    n = 20000
    uncond, text_only, face = model.draw_modes(n, gen)
    assert not (uncond & text_only).any()
    for flags, p in ((uncond, 0.1), (text_only, 0.1), (face, 0.5)):
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(flags.float().mean().item() - p) < 4.5 * sigma
    again = model.draw_modes(n, torch.Generator().manual_seed(123))
    assert all(torch.equal(a, b) for a, b in zip((uncond, text_only, face), again))


def test_subject_mlp_replaces_only_the_identity_token(batch):
    model = tiny_model()
    text, pos = model.encode_text([CAPTION] * 2, torch.tensor([MAN] * 2), torch.tensor([SMILING] * 2))
    face = model.face_features(batch["ref_embedding"], batch["ref_face"])  # shallow features by default
    assert torch.equal(model.condition(text, pos[:, 0], face, torch.ones(2, dtype=torch.bool)), text)  # zero init
    with torch.no_grad():
        model.subject_mlp.net[-1].weight.normal_()
    ctx = model.condition(text, pos[:, 0], face, torch.tensor([True, False]))
    changed = (ctx != text).any(-1)
    assert changed[0].nonzero().flatten().tolist() == [pos[0, 0].item()] and not changed[1].any()


@pytest.mark.parametrize("feature,dim", [("id_net", 128), ("shallow", 64 * 16), ("embedding", 128)])
def test_face_feature_sources(batch, feature, dim):
    model = tiny_model(face_feature=feature, id_dim=0 if feature != "embedding" else 128)
    assert model.subject_mlp.face_norm.normalized_shape == (dim,)
    loss = model.training_step(batch, 0, draw=conditioned(model, batch, 10))["loss"]
    assert torch.isfinite(loss)


def test_gradient_checkpointing_matches(batch):
    results = []
    for ckpt in (False, True):
        model = tiny_model(gradient_checkpointing=ckpt)
        terms = model.training_step(batch, 0, draw=conditioned(model, batch, 100))["terms"]
        grads = [torch.autograd.grad(terms[k], model.unet.conv_in.weight, retain_graph=True)[0] for k in terms]
        results.append(([v.detach() for v in terms.values()], grads))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_align_faces_matches_stage_alignment():
    _, photos = lfw_people(1, 1)[0]
    image = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)
    points = align.ffhq_template(250) * 0.6 + 50  # any plausible five points
    expected, _ = align.align(image, points, align.ARCFACE_112, 112)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().requires_grad_() / 127.5 - 1
    crop = align_faces(x, torch.from_numpy(points)[None].float())
    got = ((crop[0].permute(1, 2, 0) + 1) * 127.5).detach().numpy()
    assert np.abs(got - expected).mean() < 3.0
    crop.sum().backward()  # differentiable back to the image


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> dict:
    return unbroken_and_resumed("portraitbooth", shards, tmp_path_factory.mktemp("portraitbooth"), "portraitbooth_tiny")


def test_train_resume_restores_exact_step_and_weights(trained):
    unbroken, partial, resumed = trained["unbroken"], trained["partial"], trained["resumed"]
    assert partial["global_step"] == 2 and partial["FaceShardDataModule"]["consumed_batches"] == 2
    assert {k.split(".")[0] for k in partial["state_dict"]} == set(TRAINABLE)  # no frozen weights
    assert partial["portraitbooth"]["id_dim"] == 128 and partial["portraitbooth"]["embedder"] == "mobilefacenet"
    assert resumed["steps"] == unbroken["steps"] == 3 and resumed["consumed_batches"] == 3
    a = torch.load(unbroken["checkpoint"], weights_only=False)["state_dict"]
    b = torch.load(resumed["checkpoint"], weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], partial["state_dict"][k]) for k in a)  # the third step changed weights


def test_frozen_parts_unchanged_by_training(trained):
    fresh = tiny_sd_components()
    model = load_model("tiny", trained["unbroken"]["checkpoint"], "portraitbooth_tiny")
    for m in ("vae", "text_encoder"):
        ref, got = getattr(fresh, m).state_dict(), getattr(model, m).state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), m
    ref, got = load("mobilefacenet").state_dict(), model.id_net.net.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    unet = fresh.unet.state_dict()
    assert not all(torch.equal(unet[k], v) for k, v in model.unet.state_dict().items())  # the UNet trained


def test_generate_from_a_reference_photo(trained):
    model = load_model("tiny", trained["unbroken"]["checkpoint"])
    with torch.no_grad():  # a visibly identity-dependent MLP: the tiny run barely moved it
        model.subject_mlp.net[-1].weight.normal_()
    cfg = InferenceConfig(steps=2, resolution=64)
    encoder = ReferenceEncoder(model, cfg)
    (_, a), (_, b) = lfw_people(2, 1)
    faces = [cv2.cvtColor(cv2.imread(str(p[0])), cv2.COLOR_BGR2RGB) for p in (a, b)]
    out = generate(model, faces[0], "a photo of a happy man", cfg, encoder)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out, generate(model, faces[0], "a photo of a happy man", cfg, encoder))
    assert not np.array_equal(out, generate(model, faces[1], "a photo of a happy man", cfg, encoder))
    with pytest.raises(ValueError):
        generate(model, faces[0], "a photo of a dog", cfg, encoder)
    with pytest.raises(ValueError):
        encoder(np.zeros((64, 64, 3), np.uint8))  # no face


def test_inference_command_line(trained, tmp_path):
    from training.infer_portraitbooth import main

    (_, photos), = lfw_people(1, 1)
    main(["--base", "tiny", "--checkpoint", trained["unbroken"]["checkpoint"], "--reference", str(photos[0]),
          "--prompt", "a photo of a woman", "--out", str(tmp_path / "out.png"), "--steps", "2",
          "--resolution", "64", "--device", "cpu"])
    assert cv2.imread(str(tmp_path / "out.png")).shape == (64, 64, 3)


def test_shipped_configs_parse():
    for name in ("portraitbooth", "portraitbooth_tiny"):
        cfg = load_config(name)
        make(PortraitBoothConfig, cfg.get("model"), "model")
        make(OptimConfig, cfg.get("optim"), "optim")
        data_config(cfg, "person")
        assert set(cfg.get("trainer") or {}) <= set(TRAINER_DEFAULTS), name
    cfg = load_config("portraitbooth")
    model, optim = make(PortraitBoothConfig, cfg["model"], "model"), make(OptimConfig, cfg["optim"], "optim")
    assert (model.r_t, model.loc_lambda, model.loc_mu, model.loc_beta, model.loc_gamma) == (250, 0.001, 0.01, 0.8, 0.1)
    assert (model.p_text_only, model.p_uncond, model.p_face_loss) == (0.1, 0.1, 0.5)
    assert (optim.lr, optim.scheduler, optim.warmup_steps) == (1e-5, "constant", 0)
    data = data_config(cfg, "person")
    assert (data.batch_size, data.resolution, data.prompt_dropout) == (2, 512, 0.0)
    with pytest.raises(ValueError):
        make(PortraitBoothConfig, {"r_typo": 1}, "model")
    with pytest.raises(ValueError):
        tiny_model(face_feature="clip")


def test_bench_smoke(monkeypatch, capsys):
    assert_bench_smoke("train_portraitbooth", monkeypatch, capsys)


@pytest.mark.gpu
def test_train_bf16_on_gpu(shards, tmp_path):
    assert_bf16_on_gpu("portraitbooth", shards, tmp_path, "portraitbooth_tiny")