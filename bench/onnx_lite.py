"""Would onnxruntime serve the lite preset's nets on a CPU? Import time, speed, agreement.

    python bench/onnx_lite.py        # needs the test extras (onnx, for torch's exporter)

A lite run's start-up is mostly ``import torch`` (docs/benchmarks.md, "Core loop (CPU)"), and
these nets are most of its compute. This measures the alternative: each lite net
(real bundled weights) exported to ONNX and run by onnxruntime. Per net: one thread, batch 32 at
its input size, torch channels-last (what the stages run) vs onnxruntime, and the largest
difference of their outputs (over the largest output value); then the import time of each runtime in a fresh
interpreter (median of 3). A measurement only: nothing in the pipeline uses ONNX for these nets.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.memory_format import LITE_NETS, ms  # noqa: E402
from bench.report import write_section  # noqa: E402


class _Call(torch.nn.Module):
    """The call a stage makes (``forward`` or a named method), as a module to export."""

    def __init__(self, net: torch.nn.Module, call: str | None):
        super().__init__()
        self.net, self.call = net, call

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        return getattr(self.net, self.call)(x) if self.call else self.net(x)


def _tensors(out) -> list[np.ndarray]:  # noqa: ANN001
    if isinstance(out, torch.Tensor):
        return [out.detach().float().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    return [a for o in out for a in _tensors(o)]


def _import_s(module: str, n: int = 3) -> float:
    runs = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
        runs.append(time.perf_counter() - t0)
    base = min(_interpreter_s() for _ in range(n))
    return statistics.median(runs) - base


def _interpreter_s() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    import onnxruntime as ort

    from pipeline.config import build_stage

    torch.set_num_threads(1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg, shape, call in LITE_NETS:
            stage = build_stage(name, {**cfg, "device": "cpu"})
            stage.setup()
            net = _Call(stage._net.eval(), call)
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
            path = Path(tmp) / f"{name}.onnx"
            with torch.no_grad():
                xc = x.contiguous(memory_format=torch.channels_last)
                ref = _tensors(net(xc))
                t_torch = ms(lambda: net(xc))
                # after the torch run: exporting through the wrapper changed the torch net's outputs here
                torch.onnx.export(net, (x[:1],), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}},
                                  opset_version=17, dynamo=False)
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"x": x.numpy()}
            got = sess.run(None, feed)
            if [a.shape for a in ref] != [b.shape for b in got]:
                raise RuntimeError(f"{name}: output shapes {[a.shape for a in ref]} vs {[b.shape for b in got]}")
            diff = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)) for a, b in zip(ref, got))
            t_ort = ms(lambda: sess.run(None, feed))
            rows.append(f"| {name}: {stage.model}, batch {shape[0]} at {shape[2]}x{shape[3]} | {t_torch:.1f} | "
                        f"{t_ort:.1f} | {t_torch / t_ort:.2f}x | {diff:.1e} |")
    imports = {m: _import_s(m) for m in ("torch", "onnxruntime")}
    body = [f"One thread, torch {torch.__version__}, onnxruntime {ort.__version__}.", "",
            "| forward pass | torch channels-last ms | onnxruntime ms | onnxruntime speed-up | max diff ÷ max value |",
            "|---|---|---|---|---|", *rows, "",
            f"Import in a fresh interpreter (median of 3, the bare interpreter's start taken off): torch "
            f"{imports['torch']:.2f} s, onnxruntime {imports['onnxruntime']:.2f} s.", "",
            "What it would mean: lite workers without torch would start ~2-4 s sooner (torch's import is the "
            "largest part of the 300-photo run's start-up floor) and spend less CPU in these nets, at agreement "
            "to float rounding: a shorter run, not a lower core-loop ratio, whose divisor (the stages' compute) "
            "shrinks too. Not adopted yet: it needs one exported graph per weights sha256 cached beside the "
            "weights, an agreement test per net, new lineages for those stages, and stages that import torch only "
            "where they train or run on a GPU."]
    write_section("ONNX for the lite nets (CPU)", "\n".join(body), "python bench/onnx_lite.py")
    print("\n".join(body))


if __name__ == "__main__":
    main()
