"""The training-step timing loop the trainer benchmarks share."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch


def time_steps(loss_of: Callable[[int], torch.Tensor], opt: torch.optim.Optimizer, steps: int, warmup: int,
               device: torch.device) -> tuple[float, float]:
    """(seconds per optimiser step, peak GiB) of ``loss_of(i)`` + backward + step, bf16 autocast on CUDA."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_of(i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return (time.perf_counter() - t0) / steps, peak


@dataclass
class RunSettings:
    """What a trainer benchmark runs: the device, resolution, batch sizes and step counts."""

    smoke: bool
    device: torch.device
    res: int
    batches: list[int]
    steps: int
    warmup: int
    checkpointing: bool


def run_settings(doc: str, batches: str) -> RunSettings:
    """The trainer benchmarks' shared options: ``--smoke`` is tiny models on the CPU, 2 steps,
    batches 1 and 2 (what the tests run); otherwise a CUDA GPU is required."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--batches", default=batches)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny models on CPU, 2 steps, batch 1 and 2")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.smoke:
        return RunSettings(True, torch.device("cpu"), 64, [1, 2], 2, 0, not args.no_checkpointing)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (or --smoke)")
    return RunSettings(False, torch.device("cuda"), args.res, [int(b) for b in args.batches.split(",")], args.steps,
                       args.warmup, not args.no_checkpointing)
