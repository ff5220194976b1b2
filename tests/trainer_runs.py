"""Runs every trainer's tests make the same way: resume, bf16 on a GPU, the bench's smoke mode."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from training.train import train


def unbroken_and_resumed(method: str, shards: Path, root: Path, config: str) -> dict:
    """Three steps in one go, and two steps then resumed to three (the resume tests compare them)."""

    def run(name: str, steps: int, resume: str | None = None) -> dict:
        sets = [f"trainer.root_dir={root / name}", f"trainer.max_steps={steps}"]
        return train(method, shards, "tiny", config, sets, resume=resume)

    unbroken = run("a", 3)
    run("b", 2)
    partial = torch.load(root / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    return {"unbroken": unbroken, "partial": partial, "resumed": run("b", 3, resume="last")}


def assert_bf16_on_gpu(method: str, shards: Path, root: Path, config: str) -> None:
    """Two bf16-mixed steps on the GPU, frozen parts in bf16 and checkpointed: finite weights."""
    sets = [f"trainer.root_dir={root}", "trainer.accelerator=gpu", "trainer.precision=bf16-mixed",
            "model.frozen_dtype=bf16", "model.gradient_checkpointing=true", "data.num_workers=2"]
    summary = train(method, shards, "tiny", config, sets)
    state = torch.load(summary["checkpoint"], weights_only=False)["state_dict"]
    assert summary["steps"] == 2 and all(torch.isfinite(v.float()).all() for v in state.values())


def assert_bench_smoke(module: str, monkeypatch, capsys) -> None:
    """``bench/<module>.py --smoke`` runs and prints its table."""
    import importlib

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    bench = importlib.import_module(f"bench.{module}")
    monkeypatch.setattr(sys, "argv", [f"{module}.py", "--smoke"])
    bench.main()
    assert "| 2 |" in capsys.readouterr().out
