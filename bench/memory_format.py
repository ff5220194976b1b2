"""Contiguous (NCHW) vs channels-last convolutions on this CPU, one thread: why every net and
batch is channels-last on the CPU too (``stages/models/common.prepare``).

    python bench/memory_format.py

Times one forward pass of a depthwise and a dense 3x3 convolution, the lite preset's nets (real
bundled weights, batch 32 at their input sizes) and a ResNet50 trunk (random weights).
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import write_section  # noqa: E402


LITE_NETS = [("detect", {"model": "retinaface_mobile0.25"}, (32, 3, 256, 256), None),
             ("identity", {"model": "mobilefacenet"}, (32, 3, 112, 112), None),
             ("pose", {"model": "lightweight_headpose"}, (32, 3, 224, 224), None),
             ("expression", {}, (32, 3, 120, 120), "params")]
"""The lite preset's nets as their stages call them: (stage, stage config, input batch shape, method or None)."""


def ms(fn, n: int = 5) -> float:  # noqa: ANN001
    """Mean milliseconds of ``fn()`` over ``n`` calls, after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def _ms(fn, x: torch.Tensor, n: int = 5) -> float:
    with torch.inference_mode():
        return ms(lambda: fn(x), n)


def _pair(net: torch.nn.Module, shape: tuple[int, ...], call: str | None = None) -> tuple[float, float]:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    net = net.eval().to(memory_format=torch.contiguous_format)
    fn = getattr(net, call) if call else net
    a = _ms(fn, x.contiguous())
    net.to(memory_format=torch.channels_last)
    return a, _ms(fn, x.contiguous(memory_format=torch.channels_last))


def main() -> None:
    from pipeline.config import build_stage
    from stages.models.resnet import ResNet50Trunk

    torch.set_num_threads(1)
    rows = [("depthwise 3x3 conv, 64 ch, 8x64x64", _pair(torch.nn.Conv2d(64, 64, 3, padding=1, groups=64), (8, 64, 64, 64))),
            ("dense 3x3 conv, 64 ch, 8x64x64", _pair(torch.nn.Conv2d(64, 64, 3, padding=1), (8, 64, 64, 64)))]
    for name, cfg, shape, call in LITE_NETS:
        stage = build_stage(name, {**cfg, "device": "cpu"})
        stage.setup()
        rows.append((f"{name}: {stage.model}, batch {shape[0]} at {shape[2]}x{shape[3]}",
                     _pair(stage._net, shape, call)))
    rows.append(("ResNet50 trunk (random), batch 4 at 224", _pair(ResNet50Trunk(), (4, 3, 224, 224), "features")))
    body = [f"One thread, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{platform.processor() or platform.machine()}.", "",
            "| forward pass | contiguous ms | channels-last ms | speed-up |", "|---|---|---|---|",
            *[f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |" for name, (a, b) in rows], "",
            "oneDNN's depthwise kernels are much faster channels-last; dense convolutions are about even. The mobile "
            "nets of the lite preset are mostly depthwise, so every net and batch runs channels-last on the CPU as "
            "on CUDA (outputs agree with the contiguous run to float rounding)."]
    write_section("Memory format (CPU)", "\n".join(body), "python bench/memory_format.py")
    print("\n".join(body))


if __name__ == "__main__":
    main()
