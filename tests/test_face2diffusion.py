"""MSID pre-training and Face2Diffusion on tiny models (built in code) and shards the pipeline made
from real faces (detect, landmarks, identity, expression). The MSID encoder has random weights
here (no trained one can exist in the test suite); outputs say so (weights_random)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import lfw_people, make_casia_tree
from tests.trainer_runs import assert_bf16_on_gpu, unbroken_and_resumed
from training.dense_face import OptimConfig
from training.face2diffusion import TRAINABLE, F2DConfig, Face2Diffusion, OwnImageDataModule, flip_batch
from training.infer_face2diffusion import InferenceConfig, aligned_face, generate, load_model
from training.msid import MSIDConfig, MSIDDataConfig, ArcMargin, load_encoder, pair_auc
from training.sd import tiny_sd_components
from training.train import TRAINER_DEFAULTS, data_config, load_config, make, train

STAGES = "detect,landmarks,identity,expression"
SETS = ["detect.model=retinaface_mobile0.25", "identity.model=mobilefacenet"]


def expression_output(base: Path) -> Path:
    """5 identities x 3 real photos through detect, landmarks, identity and expression, 4 per shard.

    Built once per session (the Face2Diffusion and SeFi-IDE tests share it).
    """
    out = base / "faceweave_f2d" / "out"
    if (out / "shards" / "index.json").exists():
        return out
    tree = make_casia_tree(base / "faceweave_f2d" / "CASIA", n_people=5, n_photos=3)
    from pipeline.config import resolve
    from pipeline.core.runner import run

    flags = dict(source="casia-webface", input=str(tree), out=str(out), stages=STAGES, executor="local", shard_size=4)
    run(resolve(flags=flags, sets=SETS), quiet=True)
    return out


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return expression_output(tmp_path_factory.getbasetemp()) / "shards"


def tiny_f2d(**kw) -> Face2Diffusion:
    cfg = {**make(F2DConfig, load_config("face2diffusion_tiny")["model"], "model").__dict__, **kw}
    return Face2Diffusion(tiny_sd_components(), F2DConfig(**cfg)).train()


@pytest.fixture(scope="module")
def batch(shards) -> dict:
    dm = OwnImageDataModule(shards, data_config(load_config("face2diffusion_tiny"), "person"))
    return next(iter(dm.stream()))


# -- MSID ------------------------------------------------------------------------------------------

def test_pair_auc_and_margin():
    labels = torch.tensor([0, 0, 1, 1])
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert pair_auc(feats, labels) == 1.0
    assert pair_auc(feats, torch.tensor([0, 1, 0, 1])) < 0.5
    assert pair_auc(torch.ones(4, 2), labels) == 0.5  # all ties
    head = ArcMargin(2, 2, margin=0.5, scale=8.0)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    right, wrong = head(feats, labels), head(feats, 1 - labels)
    assert right < wrong
    plain = torch.nn.functional.cross_entropy(8.0 * torch.nn.functional.normalize(feats) @ torch.eye(2), labels)
    assert right > plain  # the margin makes the true class harder


@pytest.fixture(scope="module")
def msid_runs(shards, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("msid")

    def run(name: str, steps: int, resume: str | None = None) -> dict:
        return train("msid", shards, "", "tiny", [f"trainer.max_steps={steps}"], resume=resume, runs_dir=root / name)

    unbroken = run("a", 3)
    run("b", 2)
    partial = torch.load(root / "b" / "msid_tiny" / "checkpoints" / "last.ckpt", weights_only=False)
    return {"unbroken": unbroken, "partial": partial, "resumed": run("b", 3, resume="last")}


def test_msid_resume_exact_and_auc_per_depth(msid_runs, capsys):
    unbroken, partial, resumed = msid_runs["unbroken"], msid_runs["partial"], msid_runs["resumed"]
    assert partial["global_step"] == 2 and partial["MSIDDataModule"]["consumed_batches"] == 2
    assert resumed["steps"] == unbroken["steps"] == 3 and resumed["consumed_batches"] == 3
    a = torch.load(unbroken["checkpoint"], weights_only=False)["state_dict"]
    b = torch.load(resumed["checkpoint"], weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], partial["state_dict"][k]) for k in a)
    auc = unbroken["held_out_auc"]
    assert set(auc) == {"depth1", "depth2", "depth3", "depth4", "all"} and unbroken["held_out_samples"] == 6
    assert all(0.0 <= v <= 1.0 for v in auc.values())
    with capsys.disabled():
        print("\nMSID (tiny, random init, 3 steps) held-out same/different AUC per depth: "
              + ", ".join(f"{k} {v:.3f}" for k, v in auc.items()))
    enc = load_encoder(unbroken["checkpoint"])
    assert enc(torch.zeros(2, 3, 112, 112)).shape == (2, 4 * 32)


def test_msid_holds_out_identities(shards):
    from training.msid import MSIDDataModule

    dm = MSIDDataModule(shards, MSIDDataConfig(batch_size=4, num_workers=0, holdout_identities=2))
    held = set(dm.index.identity[dm.held_rows])
    assert len(held) == 2 and not held & set(dm.classes) and len(dm.classes) == 3
    assert len(dm.train_rows) == 9 and len(dm.held_rows) == 6


def test_msid_stream_same_batches_with_workers_and_from_any_start(shards):
    from torch.utils.data import DataLoader

    from training.msid import FaceStream, MSIDDataModule

    dm = MSIDDataModule(shards, MSIDDataConfig(batch_size=2, num_workers=0, holdout_identities=2))

    def labels(workers: int, start: int = 0, n: int = 5) -> list[list[int]]:
        stream = FaceStream(dm.index, dm.train_rows, dm.train_labels, dm.cfg, start)
        it = iter(DataLoader(stream, batch_size=None, num_workers=workers))
        return [next(it)["label"].tolist() for _ in range(n)]

    one = labels(0, n=7)
    assert labels(2) == one[:5]  # workers take turns by batch; the loader returns them in order
    assert labels(0, start=2) == one[2:7]  # a resumed stream starts at the batch it stopped at
    assert sorted(sum(one[:4], []) + one[4][:1]) == sorted(dm.train_labels.tolist())  # epoch 0 = every face once


# -- Face2Diffusion --------------------------------------------------------------------------------

def test_batch_has_expression_and_own_face(batch):
    assert batch["expression"].shape == (2, 10) and torch.isfinite(batch["expression"]).all()
    assert batch["face_mask"].shape == (2, 1, 64, 64) and batch["face_mask"].sum() > 0
    assert torch.isfinite(batch["points5"]).all()


def test_loss_gradients_into_mappers_only(batch):
    model = tiny_f2d()
    out = model.training_step(batch, 0)
    assert set(out["terms"]) == {"face", "background"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mapper.maps.parameters())
    frozen = [p for m in (model.unet, model.vae, model.text_encoder, model.msid) for p in m.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    assert set(k.split(".")[0] for k in model.trainable_state_dict()) == set(TRAINABLE)


def test_cgdr_is_reconstruction_inside_the_mask(batch):
    model = tiny_f2d()

    def loss(mask: torch.Tensor, cgdr: bool) -> torch.Tensor:
        model.cfg.cgdr = cgdr
        with torch.no_grad():
            return model.training_step({**batch, "face_mask": mask}, 0)["loss"]

    full, empty = torch.ones_like(batch["face_mask"]), torch.zeros_like(batch["face_mask"])
    assert torch.allclose(loss(full, True), loss(full, False))
    # outside the mask the target is the class prompt's prediction, not the noise
    assert not torch.allclose(loss(empty, True), loss(empty, False))


def test_expression_dropout_uses_learned_null_vector():
    model = tiny_f2d()
    model.eval()  # no dropout
    v_id, v_exp = torch.randn(3, model.msid.out_dim), torch.randn(3, 10)
    with torch.no_grad():
        model.mapper.null_exp.normal_()
    dropped = model.word_embeddings(v_id, v_exp, torch.tensor([False, True, False]))
    assert dropped.shape == (3, 2, 32)
    assert torch.allclose(dropped[[0, 2]], model.word_embeddings(v_id, None)[[0, 2]])
    assert torch.allclose(dropped[1], model.word_embeddings(v_id[1:2], v_exp[1:2])[0])
    assert not torch.allclose(dropped[0, 0], dropped[0, 1])  # two independent mapping networks


def test_identity_tokens_replace_the_placeholder():
    model = tiny_f2d()
    ids = model.prompt_ids[0].tolist()
    assert model.tokenizer.convert_ids_to_tokens([ids[p] for p in model.prompt_pos[0].tolist()]) == ["person</w>"] * 2
    s = torch.randn(1, 2, 32)
    with torch.no_grad():
        ctx = model.prompt_context(s)
        plain = model.text_encoder(model.prompt_ids)[0]
    first = int(model.prompt_pos[0, 0])
    assert torch.allclose(ctx[0, :first], plain[0, :first], atol=1e-6)  # causal: earlier tokens untouched
    assert not torch.allclose(ctx[0, first], plain[0, first])


def test_flip_mirrors_points_and_swaps_sides(batch):
    flipped = flip_batch(batch, torch.tensor([True, False]))
    assert torch.equal(flipped["image"][0], batch["image"][0].flip(-1))
    assert torch.equal(flipped["image"][1], batch["image"][1])
    p, q = batch["points5"][0], flipped["points5"][0]
    assert torch.allclose(q[0, 0], 63 - p[1, 0]) and torch.allclose(q[3, 1], p[4, 1])
    assert q[0, 0] < q[1, 0]  # still left eye on the image's left


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> dict:
    return unbroken_and_resumed("face2diffusion", shards, tmp_path_factory.mktemp("f2d"), "face2diffusion_tiny")


def test_train_resume_restores_exact_step_and_weights(trained):
    unbroken, partial, resumed = trained["unbroken"], trained["partial"], trained["resumed"]
    assert partial["global_step"] == 2 and partial["OwnImageDataModule"]["consumed_batches"] == 2
    assert {k.split(".")[0] for k in partial["state_dict"]} == set(TRAINABLE)
    assert partial["weights_random"] and unbroken["weights_random"]
    a = torch.load(unbroken["checkpoint"], weights_only=False)["state_dict"]
    b = torch.load(resumed["checkpoint"], weights_only=False)["state_dict"]
    assert resumed["steps"] == 3 and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], partial["state_dict"][k]) for k in a)


def test_generate_from_a_reference_photo(trained, tmp_path):
    model = load_model("tiny", trained["unbroken"]["checkpoint"])
    cfg = InferenceConfig(steps=2, resolution=64)
    (_, a), (_, b) = lfw_people(2, 1)
    faces = [aligned_face(cv2.cvtColor(cv2.imread(str(p[0])), cv2.COLOR_BGR2RGB), cfg) for p in (a, b)]
    out = generate(model, faces[0], "a photo of {} smiling", cfg)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out, generate(model, faces[0], "a photo of {} smiling", cfg))
    assert not np.array_equal(out, generate(model, faces[1], "a photo of {} smiling", cfg))
    assert not np.array_equal(out, generate(model, faces[0], "a photo of {} smiling", cfg, np.ones(10)))
    with pytest.raises(ValueError):
        generate(model, faces[0], "a photo without a slot", cfg)
    from training.infer_face2diffusion import main

    main(["--base", "tiny", "--checkpoint", trained["unbroken"]["checkpoint"], "--reference", str(a[0]),
          "--prompt", "a photo of {}", "--out", str(tmp_path / "o.png"), "--steps", "2", "--resolution", "64",
          "--device", "cpu"])
    assert cv2.imread(str(tmp_path / "o.png")).shape == (64, 64, 3)


def test_shipped_configs_parse():
    for name in ("face2diffusion", "face2diffusion_tiny"):
        cfg = load_config(name)
        make(F2DConfig, cfg.get("model"), "model")
        make(OptimConfig, cfg.get("optim"), "optim")
        data_config(cfg, "person")
        assert set(cfg.get("trainer") or {}) <= set(TRAINER_DEFAULTS), name
    paper = load_config("face2diffusion")
    m, o, d = make(F2DConfig, paper["model"], "model"), make(OptimConfig, paper["optim"], "optim"), \
        data_config(paper, "person")
    assert (m.p_drop_exp, m.tokens, o.lr, d.batch_size, paper["trainer"]["max_steps"]) == (0.2, 2, 1e-5, 32, 100000)
    for name in ("msid", "msid_tiny"):
        cfg = load_config(name)
        make(MSIDConfig, cfg.get("model"), "model")
        make(MSIDDataConfig, cfg.get("data"), "data")
    msid = make(MSIDConfig, load_config("msid")["model"], "model")
    assert (msid.depth, msid.depths) == (12, [3, 6, 9, 12])
    assert make(OptimConfig, load_config("msid")["optim"], "optim").lr == 1e-3
    assert make(MSIDDataConfig, load_config("msid")["data"], "data").batch_size == 1024
    with pytest.raises(ValueError):
        make(F2DConfig, {"p_typo": 1}, "model")


@pytest.mark.gpu
def test_train_bf16_on_gpu(shards, tmp_path):
    assert_bf16_on_gpu("face2diffusion", shards, tmp_path, "face2diffusion_tiny")