"""Loss-term magnitudes and gradient norms of the Dense-Face and PortraitBooth trainers on tiny SD.

    python -m bench.loss_balance [--shards OUT/shards] [--steps 20] [--dense-size 128]

Without ``--shards`` the test fixture's pipeline output (real LFW/CASIA-style photos through
detect, landmarks, identity, pose) is built under /tmp. Per term: its value and the L2 norm of its
gradient over the trainable parameters (Dense-Face: also over the annotation head alone), at
initialisation and after ``--steps`` AdamW steps on the total loss of one fixed batch (values
and gradient norms of the unweighted terms; "total" is the weighted sum); Dense-Face also prints each annotation term's floor for a trivial head. Tiny random
SD components: the magnitudes of the annotation terms (which depend only on the targets and the
head) carry over to SD 2.1, the noise and attention terms only roughly.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from training.data import DataConfig, FaceShardDataModule
from training.sd import tiny_sd_components


def grad_norm(term: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return float(sum(float((g.float() ** 2).sum()) for g in grads if g is not None) ** 0.5)


def report(model: torch.nn.Module, step, params: dict[str, list[torch.Tensor]], steps: int) -> list[dict]:
    """Rows (phase, term, value, grad norms) at init and after ``steps`` AdamW steps."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    rows = []
    for phase in ("init", f"after {steps} steps"):
        if phase != "init":
            for _ in range(steps):
                opt.zero_grad()
                step()["loss"].backward()
                opt.step()
        out = step()
        for name, term in {**out["terms"], "total": out["loss"]}.items():
            norms = {k: grad_norm(term, v) if term.requires_grad else 0.0 for k, v in params.items()}
            rows.append({"phase": phase, "term": name, "value": float(term), **norms})
    return rows


def dense_face(shards: Path, dense_size: int, steps: int, reduction: str, lambdas: tuple[float, float, float]):
    from training.dense_face import DenseFace, DenseFaceConfig

    cfg = DenseFaceConfig(dense_size=dense_size, id_dim=128, id_hidden=32, head_channels=16, heatmap_sigma=1.5,
                          dense_reduction=reduction, lambda_landmarks=lambdas[0], lambda_mask=lambdas[1],
                          lambda_depth=lambdas[2])
    model = DenseFace(tiny_sd_components(), cfg)
    dm = FaceShardDataModule(shards, DataConfig(batch_size=2, resolution=64, num_workers=0, shuffle_buffer=4,
                                                prompt_dropout=0.0))
    batch = next(iter(dm.stream()))
    params = {"grad (trainable)": model.trainable_parameters(), "grad (head)": list(model.head.parameters())}
    return report(model, lambda: model.training_step(batch, 0), params, steps)


def trivial_floors(shards: Path, dense_size: int, sigma: float = 1.5) -> str:
    """Each annotation term for a trivial head: zero heatmaps, class-prior mask logits, mean depth."""
    from schemas import pseudo_mask
    from training.dense_losses import dense_terms
    from training.heatmaps import dense_targets, landmark_subset

    dm = FaceShardDataModule(shards, DataConfig(batch_size=4, resolution=64, num_workers=0, shuffle_buffer=4,
                                                prompt_dropout=0.0))
    b = next(iter(dm.stream()))
    heat, mask, depth = dense_targets(b["landmarks"], b["mask"], b["depth"], 64, dense_size,
                                      torch.from_numpy(landmark_subset("all")), sigma)
    n = len(pseudo_mask.NAMES)
    prior = torch.bincount(mask.flatten(), minlength=n).float() / mask.numel()
    logits = prior.clamp_min(1e-6).log().view(1, n, 1, 1).expand(len(mask), n, dense_size, dense_size)
    flat = depth.mean((-2, -1), keepdim=True).expand_as(depth)
    lines = [f"**Trivial-head floors, {dense_size}^2, sigma {sigma}, {len(mask)} samples**", "",
             "| reduction | landmarks | mask | depth |", "|---|---|---|---|"]
    for reduction in ("mean", "map_sum"):
        t = dense_terms(torch.zeros_like(heat), heat, logits, mask, flat, depth, reduction)
        lines.append(f"| {reduction} | {float(t['landmarks']):.3g} | {float(t['mask']):.3g} | {float(t['depth']):.3g} |")
    return "\n".join(lines) + "\n"


def portraitbooth(shards: Path, steps: int):
    from training.portraitbooth import PortraitBooth, PortraitBoothConfig

    model = PortraitBooth(tiny_sd_components(), PortraitBoothConfig(id_dim=128, mlp_hidden=32,
                                                                      embedder="mobilefacenet")).train()
    data = DataConfig(batch_size=2, resolution=64, num_workers=0, shuffle_buffer=4, prompt_dropout=0.0,
                      keep_subject=True, reference_face=True, fallback_caption="a photo of a smiling person")
    batch = next(iter(FaceShardDataModule(shards, data).stream()))
    d = model.draw(batch, 0)
    no = torch.zeros(len(d.t), dtype=torch.bool)
    d = replace(d, uncond=no, text_only=no, t=torch.full_like(d.t, 200))  # every term active
    params = {"grad (trainable)": model.trainable_parameters()}
    return report(model, lambda: model.training_step(batch, 0, draw=d), params, steps)


def table(title: str, rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("phase", "term", "value")]
    lines = [f"**{title}**", "", "| phase | term | value | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['term']} | {r['value']:.3g} | "
                     + " | ".join(f"{r[k]:.3g}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=Path)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dense-size", type=int, default=128)
    ap.add_argument("--only", choices=("dense-face", "portraitbooth"))
    args = ap.parse_args(argv)
    if args.shards is None:
        from tests.test_training_data import pipeline_output

        args.shards = pipeline_output(Path("/tmp/faceweave_loss_balance")) / "shards"
    torch.manual_seed(0)
    if args.only != "portraitbooth":
        from training.dense_face import DenseFaceConfig

        print(trivial_floors(args.shards, args.dense_size))
        d = DenseFaceConfig()
        for reduction, lambdas in (("mean", (1.0, 0.1, 1.0)),
                                   ("map_sum", (d.lambda_landmarks, d.lambda_mask, d.lambda_depth))):
            rows = dense_face(args.shards, args.dense_size, args.steps, reduction, lambdas)
            print(table(f"Dense-Face, reduction={reduction}, lambdas={lambdas}, dense {args.dense_size}^2", rows))
    if args.only != "dense-face":
        print(table("PortraitBooth (paper weights, t = 200, every sample conditioned)",
                    portraitbooth(args.shards, args.steps)))


if __name__ == "__main__":
    main()
