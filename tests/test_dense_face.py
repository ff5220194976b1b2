"""Dense-Face on tiny SD components (built in code) and shards the pipeline made from real faces."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_training_data import pipeline_output
from tests.trainer_runs import assert_bench_smoke, assert_bf16_on_gpu
from training.data import DataConfig, FaceShardDataModule
from training.dense_face import TRAINABLE, DenseFace, DenseFaceConfig, identity_positions
from training.infer_dense_face import InferenceConfig, face_generation, generate, load_model, paste_back, square_box
from training.sd import tiny_sd_components
from training.train import CONFIG_DIR, TRAINER_DEFAULTS, data_config, load_config, make, train


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return pipeline_output(tmp_path_factory.getbasetemp()) / "shards"


def tiny_model(**kw) -> DenseFace:
    cfg = dict(dense_size=16, id_dim=128, id_hidden=32, head_channels=16, landmark_subset="mask_loops")
    return DenseFace(tiny_sd_components(), DenseFaceConfig(**{**cfg, **kw}))


@pytest.fixture(scope="module")
def batch(shards) -> dict:
    dm = FaceShardDataModule(shards, DataConfig(batch_size=2, resolution=64, num_workers=0, shuffle_buffer=4,
                                                prompt_dropout=0.0))
    return next(iter(dm.stream()))


def test_every_loss_term_finite_with_gradients_into_trainable_only(batch):
    model = tiny_model()
    out = model.training_step(batch, 0)
    terms = out["terms"]
    assert set(terms) == {"eps", "landmarks", "mask", "depth"}
    trainable = model.trainable_parameters()
    frozen = [p for m in (model.unet, model.vae, model.text_encoder) for n, p in m.named_parameters()
              if ".processor." not in n]
    assert all(not p.requires_grad for p in frozen)
    for name, term in terms.items():
        assert torch.isfinite(term), name
        grads = torch.autograd.grad(term, trainable, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    out["loss"].backward()
    for part in TRAINABLE:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part
    assert all(p.grad is None for p in frozen)


def test_low_rank_adapter_on_all_tokens_with_two_identity_tokens(batch):
    model = tiny_model(pc_rank=2, pc_scope="all", id_tokens=2)
    loss = model.training_step(batch, 0)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for proc in model.pc_adapter for p in proc.to_k_res[1].parameters())
    with pytest.raises(ValueError):
        model.denoise(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.randn(1, 78, 32))  # one token short


def test_text_editing_mode_is_the_frozen_sd():
    model, plain = tiny_model(), tiny_sd_components().unet
    with torch.no_grad():
        for proc in model.pc_adapter:  # a trained adapter must still leave text mode untouched
            proc.to_q_res.weight.normal_()
        z, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
        text, face = model.encode_text(["a photo of a face"], torch.tensor([[13, 17]]))
        ctx = model.identity_context(text, face, torch.randn(1, 128))
        expected = plain(z, t, encoder_hidden_states=text).sample
        pose = torch.rand(1, 3, 64, 64)
        assert torch.allclose(model.denoise(z, t, ctx, pose, face_mode=False), expected, atol=1e-5)
        assert not torch.allclose(model.denoise(z, t, ctx, pose), expected, atol=1e-3)


def test_identity_token_located_in_captions():
    model = tiny_model()
    captions = ["a photo of a face", "a smiling face, outdoors", "no subject here"]
    tok = model.tokenizer(captions, padding="max_length", max_length=77, return_offsets_mapping=True,
                          return_tensors="pt")
    pos = identity_positions(tok.offset_mapping, torch.tensor([[13, 17], [10, 14], [-1, -1]]))
    assert pos[2] == -1
    for i in (0, 1):
        assert model.tokenizer.convert_ids_to_tokens(int(tok.input_ids[i, pos[i]])) == "face</w>"


def test_gradient_checkpointing_matches(batch):
    losses = []
    for ckpt in (False, True):
        model = tiny_model(gradient_checkpointing=ckpt)
        loss = model.training_step(batch, 0)["loss"]
        loss.backward()
        losses.append((loss.detach(), model.pose_branch.conv_in.weight.grad.clone()))
    assert torch.allclose(losses[0][0], losses[1][0], atol=1e-5)
    assert torch.allclose(losses[0][1], losses[1][1], atol=1e-5)


def test_train_resume_restores_exact_step_and_weights(shards, tmp_path):
    fresh = tiny_sd_components()
    def run(root: str, steps: int, resume: str | None = None) -> dict:
        sets = [f"trainer.root_dir={tmp_path / root}", f"trainer.max_steps={steps}"]
        return train("dense-face", shards, "tiny", "tiny", sets, resume=resume)

    unbroken = run("a", 3)
    run("b", 2)
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["FaceShardDataModule"]["consumed_batches"] == 2
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == set(TRAINABLE)  # no frozen SD weights
    resumed = run("b", 3, resume="last")
    assert resumed["steps"] == unbroken["steps"] == 3 and resumed["consumed_batches"] == 3
    a = torch.load(unbroken["checkpoint"], weights_only=False)["state_dict"]
    b = torch.load(resumed["checkpoint"], weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], ckpt["state_dict"][k]) for k in a)  # the third step changed weights
    assert unbroken["pairs"]["single_image_identities"] == 1
    # the frozen SD the model was built on is unchanged by training
    model = load_model("tiny", unbroken["checkpoint"], "tiny")
    for m in ("unet", "vae", "text_encoder"):
        ref = getattr(fresh, m).state_dict()
        got = {k: v for k, v in getattr(model, m).state_dict().items() if ".processor." not in k}
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), m
    assert all(torch.equal(model.trainable_state_dict()[k], a[k]) for k in a)


def test_load_model_from_diffusers_folder(tmp_path):
    tiny_sd_components().save(tmp_path / "sd")
    model = tiny_model()
    torch.save({"state_dict": model.trainable_state_dict()}, tmp_path / "w.ckpt")
    loaded = load_model(str(tmp_path / "sd"), tmp_path / "w.ckpt", "tiny")
    a, b = model.trainable_state_dict(), loaded.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(KeyError):
        loaded.load_trainable({})


def test_shipped_configs_parse():
    from training.dense_face import DenseFaceConfig, OptimConfig

    from training.catalog import owner

    paths = sorted(p for p in CONFIG_DIR.glob("*.yaml") if owner(p.stem) == "dense-face")
    assert {p.stem for p in paths} >= {"dense_face", "tiny"}
    for path in paths:
        cfg = load_config(path)
        make(DenseFaceConfig, cfg.get("model"), "model")
        make(OptimConfig, cfg.get("optim"), "optim")
        data_config(cfg, "face")
        assert set(cfg.get("trainer") or {}) <= set(TRAINER_DEFAULTS), path
    cfg = load_config("dense_face", ["optim.lr=1e-5", "data.pairs.min_yaw_gap=10"])
    assert make(OptimConfig, cfg["optim"], "optim").lr == 1e-5  # YAML 1.1 reads 1e-5 as a string
    assert data_config(cfg, "face").pairs.min_yaw_gap == 10
    with pytest.raises(ValueError):
        make(DenseFaceConfig, {"lambda_typo": 1}, "model")
    with pytest.raises(ValueError):
        load_config("dense_face", ["no_equals_sign"])


def test_two_mode_inference_blends_and_pastes():
    model = tiny_model()
    cfg = InferenceConfig(steps=3, resolution=64, guidance_scale=2.0)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1
    out = generate(model, "a photo of a person", np.random.randn(128).astype(np.float32),
                   locate_face=lambda im: (20, 20, 40, 44), pose_of=lambda crop: np.zeros_like(crop),
                   mask_of=lambda crop: mask, cfg=cfg)
    x0, y0, x1, y1 = out["box"]
    assert x1 - x0 == y1 - y0 and out["result"].shape == out["base"].shape == (64, 64, 3)
    outside = np.ones((64, 64), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out["result"][outside], out["base"][outside])
    again = generate(model, "a photo of a person", np.zeros(128, np.float32), lambda im: (20, 20, 40, 44),
                     lambda crop: np.zeros_like(crop), lambda crop: mask, cfg=cfg)
    assert np.array_equal(again["base"], out["base"])  # text-editing mode ignores the identity


def test_latent_blending_keeps_unmasked_latents():
    model = tiny_model().eval()
    face = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    args = (np.zeros(128, np.float32), np.zeros_like(face))
    cfg = InferenceConfig(steps=2, resolution=64, guidance_scale=1.0)
    kept = face_generation(model, face, *args, np.zeros((64, 64)), "a photo of a face", (13, 17), cfg,
                           torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        x = torch.from_numpy(face).permute(2, 0, 1)[None] / 127.5 - 1
        roundtrip = model.decode_latents(model.encode_images(x, gen))
    expected = ((roundtrip[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(kept, expected)  # mask 0: the result is the (VAE round-trip of the) crop
    repainted = face_generation(model, face, *args, np.ones((64, 64)), "a photo of a face", (13, 17), cfg,
                                torch.Generator().manual_seed(1))
    assert not np.array_equal(repainted, expected)


def test_box_and_paste_helpers():
    assert square_box((10, 10, 30, 50), (64, 64, 3), 0.0) == (0, 10, 40, 50)
    x0, y0, x1, y1 = square_box((50, 50, 70, 70), (64, 64, 3), 0.5)
    assert x1 <= 64 and y1 <= 64 and x1 - x0 == y1 - y0
    base = np.zeros((32, 32, 3), np.uint8)
    pasted = paste_back(base, np.full((8, 8, 3), 200, np.uint8), (8, 8, 24, 24), None, 0.0)
    assert pasted[16, 16, 0] == 200 and pasted[0, 0, 0] == 0


def test_bench_smoke(monkeypatch, capsys):
    assert_bench_smoke("train_dense_face", monkeypatch, capsys)


@pytest.mark.gpu
def test_train_bf16_on_gpu(shards, tmp_path):
    assert_bf16_on_gpu("dense-face", shards, tmp_path, "tiny")