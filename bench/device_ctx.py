"""What bench/device_check.py's parts share: the context a part runs in (where to write, smoke or
GPU, sizes), machine facts read without touching CUDA, and small helpers."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
SHARED_FACES = ROOT.parent / "shared" / "faces" / "lfw10"
SAMPLE_FACES = ROOT / "pipeline" / "data" / "sample"
E2E_STAGES = ["detect", "restore", "landmarks", "pose", "parsing", "identity"]
# The full preset's GPU stages (the "combined" per-stage figure) and, in smoke, their lite stand-ins.
DEFAULT_CASES = ["detect retinaface_resnet50", "restore codeformer w=0.5", "pose hopenet_r50", "parsing bisenet",
                 "identity arcface_irse50"]
SMOKE_CASES = ["detect retinaface_mobile0.25", "pose lightweight_headpose", "identity mobilefacenet"]
SMOKE_LEFT_OUT = ("restore", "parsing")
"""Left out of the smoke runs: even tiny, CodeFormer and BiSeNet at 512 px cost seconds per image on a
busy 2-core CPU. Their code paths are the same runner and stage calls as the others'."""
# Sizes: (GPU, smoke).
E2E_N = {250: (3000, 4), 1024: (500, 2)}
E2E_SHARD = {250: (500, 2), 1024: (250, 1)}
NAIVE_N = (8, 2)
STAGE_BATCHES = ([32, 128], [1, 2])
DENSE_FACE_BATCHES = ([1, 4], [1])
PORTRAITBOOTH_BATCHES = ([2, 8], [1])


@dataclass
class Ctx:
    """What a part needs: where to write, whether this is the CPU smoke run, the executor, the faces."""

    out: Path
    """The report folder (only gpu_tests writes a file there: gpu_tests.txt)."""
    work: Path
    """Scratch folder shared by the parts (trees, caption models, partial results)."""
    smoke: bool
    """Tiny sizes and models on the CPU."""
    executor: str | None = None
    """Pipeline executor for the e2e parts; None: ray where importable, else processes (processes in smoke)."""
    faces: str | None = None
    """Folder of face JPEGs; None: ../shared/faces/lfw10, else the bundled sample photos."""
    part: str = ""

    def pick(self, pair: tuple):
        return pair[1] if self.smoke else pair[0]

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"

    def faces_dir(self) -> Path:
        for d in (Path(self.faces) if self.faces else None, SHARED_FACES, SAMPLE_FACES):
            if d is not None and d.is_dir() and any(d.rglob("*.jpg")):
                return d
        raise FileNotFoundError("no face photos: pass --faces DIR")

    def save(self, figures: dict, **extra) -> None:
        """Write this part's figures so far (atomically): the parent reads them even after a kill."""
        path = self.work / f"{self.part}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"figures": figures, **extra}, indent=1, default=str))
        tmp.replace(path)

    def load(self, part: str) -> dict:
        path = self.work / f"{part}.json"
        return json.loads(path.read_text()) if path.exists() else {}


def machine() -> str:
    """Cores, CPU, GPU (from nvidia-smi: the parent must not initialise CUDA before it forks), Python."""
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), "unknown CPU")
    gpu = _smi("name,memory.total")
    return f"{os.cpu_count()} cores ({cpu})" + (f", GPU {gpu} MiB" if gpu else ", no GPU") + \
        f", Python {platform.python_version()}"


def versions() -> dict[str, str]:
    """Installed versions (package metadata: nothing is imported), CUDA driver, git commit."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "mediapipe", "transformers", "diffusers", "ray", "pyarrow"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "missing"
    found["driver"] = _smi("driver_version") or "none"
    try:
        found["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                         capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        found["commit"] = "unknown"
    return found


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _smi(query: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def built_on(device: str, build: Callable[[], T]) -> T:
    """``build()`` with new tensors created straight on the GPU (random init there takes seconds, not
    the minutes of CPU init of a billion parameters); on the CPU again if that fails (code that mixes
    in CPU tensors while it builds)."""
    import torch

    if device.startswith("cuda"):
        try:
            with torch.device(device):
                return build()
        except (RuntimeError, TypeError, ValueError) as exc:
            print(f"building on {device} failed ({type(exc).__name__}: {exc}); building on the CPU", flush=True)
    return build()


def use_faces(ctx: Ctx) -> Path:
    """Point the bench scripts' photo folder at the one this machine has."""
    from bench import e2e, naive, stages_gpu

    faces = ctx.faces_dir()
    e2e.FACES = naive.FACES = stages_gpu.FACES = faces
    return faces



def round3(value: float) -> float:
    """Three significant figures (CPU smoke rates are far below 1 img/s)."""
    return float(f"{value:.3g}")


def gib_or_none(value: float) -> float | None:
    return None if value != value else round(value, 2)  # NaN (CPU) -> None
