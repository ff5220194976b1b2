"""SeFi-IDE on tiny SD components (built in code) and one real face from shards the pipeline made."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.test_face2diffusion import expression_output
from training.dense_face import OptimConfig
from training.infer_sefi_ide import Composer, InferenceConfig, main
from training.pairs import load_index
from training.sd import tiny_sd_components
from training.sefi_ide import TRAINABLE, OneFaceDataModule, SeFiConfig, SeFiDataConfig, SeFiIDE, augment, pick_reference
from training.sefi_ide_blocks import KVState, attention_target
from training.train import TRAINER_DEFAULTS, load_config, make, train


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return expression_output(tmp_path_factory.getbasetemp()) / "shards"


def tiny_model(**kw) -> SeFiIDE:
    cfg = {**make(SeFiConfig, load_config("sefi_ide_tiny")["model"], "model").__dict__, **kw}
    return SeFiIDE(tiny_sd_components(), SeFiConfig(**cfg)).train()


@pytest.fixture(scope="module")
def face(shards) -> dict:
    dm = OneFaceDataModule(shards, SeFiDataConfig(resolution=64), identity="0000003")
    return next(iter(dm.train_dataloader()))


def test_reference_by_key_or_identity(shards):
    index = load_index(shards)
    row = pick_reference(index, None, "0000002")
    assert index.identity[row] == "0000002"
    assert pick_reference(index, "0000001_002", None) == index.row("0000001_002")
    for key, ident in ((None, None), ("0000001_002", "0000001")):
        with pytest.raises(ValueError):
            pick_reference(index, key, ident)
    with pytest.raises(KeyError):
        pick_reference(index, None, "nobody")


def test_attention_loss_falls_when_optimised(face):
    """The face-wise attention term is differentiable in the tokens and Adam on it alone lowers it."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    latents = model.encode_images(face["image"], gen)
    noisy = model.scheduler.add_noise(latents, torch.randn(latents.shape, generator=gen), torch.tensor([500]))
    t, ids, pos = torch.tensor([500]), model.prompt_ids[:1], model.prompt_pos[:1]
    with torch.no_grad():
        reference = model.text_encoder(ids)[0]
    opt = torch.optim.Adam(model.token_net.parameters(), lr=5e-3)
    losses = []
    for _ in range(6):
        tokens = model.token_net()[model.stage_of(t)]
        keys, values = model.contexts(ids, pos, tokens)
        _, att = model.denoise(noisy, t, keys, values, reference, face["face_mask"], pos)
        loss = torch.stack(att).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(att) == model.n_cross and losses[-1] < losses[0], losses


def test_attention_target_cuts_identity_column_to_the_face():
    probs = torch.full((1, 2, 4, 3), 1 / 3)  # (B, heads, HW=2x2, L)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    state = KVState(target_mask=mask, id_pos=torch.tensor([1]))
    out = attention_target(probs, state, (2, 2))
    assert torch.equal(out[..., [0, 2]], probs[..., [0, 2]])
    assert torch.allclose(out[0, :, :, 1], torch.tensor([1 / 3, 0, 0, 0]).expand(2, 4))
    assert attention_target(probs, KVState(), (2, 2)) is probs  # reference mode: Algorithm 1


def test_keys_and_values_come_from_separate_tokens(face):
    model = tiny_model().eval()
    z, t = torch.randn(1, 4, 8, 8), torch.tensor([100])
    ids, pos = model.prompt_ids[:1], model.prompt_pos[:1]
    a, b = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
    with torch.no_grad():
        k_a, _ = model.contexts(ids, pos, torch.cat([a, a], 1))
        k_b, _ = model.contexts(ids, pos, torch.cat([b, b], 1))
        same, _ = model.denoise(z, t, k_a, k_a)
        plain = tiny_sd_components().unet(z, t, encoder_hidden_states=k_a).sample
        mixed, _ = model.denoise(z, t, k_a, k_b)
    assert torch.allclose(same, plain, atol=1e-5)  # K = V context: ordinary cross-attention
    assert not torch.allclose(mixed, same, atol=1e-4)


def test_stage_split_and_augment(face):
    model = tiny_model()
    assert model.stage_of(torch.tensor([0, 199, 200, 999])).tolist() == [0, 0, 1, 4]
    img, mask = augment(face["image"], face["face_mask"], model.cfg, torch.Generator().manual_seed(3))
    assert img.shape == face["image"].shape and img.min() >= -1 and img.max() <= 1
    assert 0 < mask.sum() <= face["face_mask"].sum() + 1e-3


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sefi")

    def run(name: str, steps: int, resume: str | None = None) -> dict:
        return train("sefi-ide", shards, "tiny", "tiny", [f"trainer.max_steps={steps}"], resume=resume,
                     runs_dir=root / name, identity="0000003")

    unbroken = run("a", 3)
    run("b", 2)
    key = unbroken["key"]
    assert Path(unbroken["root"]) == root / "a" / "sefi_ide_tiny" / key  # one folder per face
    partial = torch.load(root / "b" / "sefi_ide_tiny" / key / "checkpoints" / "last.ckpt", weights_only=False)
    return {"unbroken": unbroken, "partial": partial, "resumed": run("b", 3, resume="last")}


def test_train_resume_exact_and_tokens_differ_per_stage(trained):
    unbroken, partial, resumed = trained["unbroken"], trained["partial"], trained["resumed"]
    assert partial["global_step"] == 2 and {k.split(".")[0] for k in partial["state_dict"]} == set(TRAINABLE)
    a = torch.load(unbroken["checkpoint"], weights_only=False)["state_dict"]
    b = torch.load(resumed["checkpoint"], weights_only=False)["state_dict"]
    assert resumed["steps"] == 3 and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], partial["state_dict"][k]) for k in a)
    assert unbroken["identity"] == "0000003" and unbroken["key"].startswith("0000003_")
    assert len(unbroken["history"]) == 3 and all(np.isfinite(h["attention"]) for h in unbroken["history"])
    tokens = torch.load(unbroken["tokens"], weights_only=False)
    assert tokens["k"].shape == tokens["v"].shape == (5, 32)
    for part in ("k", "v"):
        x = tokens[part]
        assert all(not torch.allclose(x[i], x[j]) for i in range(5) for j in range(i + 1, 5)), part
    assert not torch.allclose(tokens["k"], tokens["v"])


def test_compose_tokens_into_prompts(trained, tmp_path):
    tokens = torch.load(trained["unbroken"]["tokens"], weights_only=False)
    composer = Composer(tiny_sd_components(), tokens)
    keys, values = composer.stage_contexts("a photo of {} smiling")
    assert keys.shape == (5, 77, 32) and not torch.allclose(keys[0], keys[4])
    cfg = InferenceConfig(steps=2, resolution=64)
    out = composer.generate("a photo of {} smiling", cfg)
    assert out.shape == (64, 64, 3) and np.array_equal(out, composer.generate("a photo of {} smiling", cfg))
    other = Composer(tiny_sd_components(), {**tokens, "k": tokens["k"] * 0, "v": tokens["v"] * 0})
    assert not np.array_equal(out, other.generate("a photo of {} smiling", cfg))
    with pytest.raises(ValueError):
        composer.generate("no slot here", cfg)
    main(["--base", "tiny", "--tokens", trained["unbroken"]["tokens"], "--prompt", "a photo of {}",
          "--out", str(tmp_path / "o.png"), "--steps", "2", "--resolution", "64", "--device", "cpu"])
    assert cv2.imread(str(tmp_path / "o.png")).shape == (64, 64, 3)


def test_shipped_configs_parse():
    for name in ("sefi_ide", "sefi_ide_tiny"):
        cfg = load_config(name)
        make(SeFiConfig, cfg.get("model"), "model")
        make(OptimConfig, cfg.get("optim"), "optim")
        make(SeFiDataConfig, cfg.get("data"), "data")
        assert set(cfg.get("trainer") or {}) <= set(TRAINER_DEFAULTS), name
    paper = load_config("sefi_ide")
    m, o = make(SeFiConfig, paper["model"], "model"), make(OptimConfig, paper["optim"], "optim")
    assert (m.stages, m.lambda_attention, o.lr, o.weight_decay, paper["trainer"]["max_steps"]) == (5, 0.003, 5e-3, 0.0, 1000)
    assert len(m.prompts) == 7


@pytest.mark.gpu
def test_train_bf16_on_gpu(shards, tmp_path):
    sets = ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "model.frozen_dtype=bf16",
            "trainer.max_steps=2"]
    summary = train("sefi-ide", shards, "tiny", "tiny", sets, runs_dir=tmp_path, key="0000001_001")
    tokens = torch.load(summary["tokens"], weights_only=False)
    assert summary["steps"] == 2 and torch.isfinite(tokens["k"]).all() and torch.isfinite(tokens["v"]).all()
