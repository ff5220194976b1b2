"""Training progress: a tqdm bar (step/total, loss terms, it/s) on a terminal, a line every
``interval`` seconds otherwise (and always one at the end), on stderr.

Replaces Lightning's bar, which counts epochs of an endless stream ("Epoch 0/-2").
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L
import torch


def _terms(outputs: Any) -> dict[str, float]:
    """The loss and its terms of one ``training_step`` output, as floats."""
    if isinstance(outputs, torch.Tensor):
        return {"loss": float(outputs.detach())}
    if not isinstance(outputs, dict):
        return {}
    out = {"loss": float(outputs["loss"].detach())} if "loss" in outputs else {}
    for name, value in (outputs.get("terms") or {}).items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[name] = float(value.detach())
    return out


def format_terms(terms: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in terms.items())


class StepProgress(L.Callback):
    """Step progress with loss terms and throughput; ``tty=None`` asks the stream."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0, tty: bool | None = None):
        self.stream, self.interval, self.tty = stream, interval, tty
        self.bar = None
        self.last: dict[str, float] = {}

    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.total, self.start_step = trainer.max_steps, trainer.global_step
        self.t0 = self.t_line = time.perf_counter()
        self.step_line = self.start_step
        tty = self.tty if self.tty is not None else self._out().isatty()
        if tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.start_step, desc="train", unit="step",
                            file=self._out(), dynamic_ncols=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        self.last = _terms(outputs) or self.last
        step = trainer.global_step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(format_terms(self.last), refresh=False)
            return
        now = time.perf_counter()
        if now - self.t_line >= self.interval:
            self._line(step, (step - self.step_line) / max(now - self.t_line, 1e-9))
            self.t_line, self.step_line = now, step

    def _line(self, step: int, rate: float) -> None:
        print(f"step {step}/{self.total}  {format_terms(self.last)}  {rate:.2f} it/s", file=self._out(), flush=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        elapsed = time.perf_counter() - self.t0
        done = trainer.global_step - self.start_step
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(f"trained {done} steps ({trainer.global_step}/{self.total}) in {elapsed:.1f} s, "
              f"{done / max(elapsed, 1e-9):.2f} it/s; last {format_terms(self.last)}", file=self._out(), flush=True)
