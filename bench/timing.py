"""The training-step timing loop the trainer benchmarks share."""
from __future__ import annotations

import time
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
