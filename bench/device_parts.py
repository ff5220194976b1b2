"""The parts of bench/device_check.py: each measures with the existing bench scripts' functions and
saves its figures (``Ctx.save``) the moment it has them. One part runs per child process."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
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
    """Pipeline executor for the e2e parts; None: ray where importable (local in smoke)."""
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


# ---------------------------------------------------------------- gpu_tests

def gpu_tests(ctx: Ctx) -> None:
    """pytest -m gpu over the suite (one file in smoke); pass/fail/skip counts and the failing names."""
    junit = ctx.work / "junit.xml"
    junit.unlink(missing_ok=True)
    targets = ["tests/test_identity.py"] if ctx.smoke else ["tests"]
    # A module that cannot import there (pipeline/sql.py needs duckdb, which a device call cannot
    # carry) is an error row; the other modules' tests still run.
    args = ["-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            f"--junitxml={junit}", *targets]
    rc = _pytest_in_process(args, ctx.out / "gpu_tests.txt")
    if not junit.exists():
        raise RuntimeError(f"pytest wrote no junit file (exit {rc}); see gpu_tests.txt")
    suites = ET.parse(junit).getroot()
    suite = suites if suites.tag == "testsuite" else suites[0]
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed, errors = int(suite.get("failures", 0)), int(suite.get("errors", 0))
    bad = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None]
    ctx.save({"total": total, "passed": total - skipped - failed - errors, "failed": failed, "errors": errors,
              "skipped": skipped, "pytest_exit": rc}, failing=bad[:30])


def _pytest_in_process(args: list[str], log_path: Path) -> int:
    """pytest.main in this (forked) process, output to ``log_path``: no second torch import."""
    import pytest

    os.chdir(ROOT)
    sys.stdout.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            return int(pytest.main(args))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


# ---------------------------------------------------------------- prep

def tree_dir(ctx: Ctx, size: int) -> Path:
    return ctx.work / f"tree{size}"


def make_tree(ctx: Ctx, size: int) -> Path:
    """CASIA-like tree of real photos re-encoded at ``size`` px (bench/e2e.py make_tree), made once."""
    from bench import e2e

    use_faces(ctx)
    tree, n = tree_dir(ctx, size), ctx.pick(E2E_N[size])
    if not (tree / ".done").exists():
        e2e.make_tree(tree, n, size)
        (tree / ".done").write_text(str(n))
    return tree


def prep(ctx: Ctx) -> None:
    """Input trees, then the caption models (bench/caption.py: real where resolvable, else random
    real-size architectures; tiny in smoke), saved for the e2e and naive parts."""
    from bench import caption

    figures: dict = {}
    for size in E2E_N:
        t0 = time.perf_counter()
        make_tree(ctx, size)
        figures[f"tree_{size}_s"] = round(time.perf_counter() - t0, 1)
        ctx.save(figures)
    t0 = time.perf_counter()
    dirs, random = built_on(ctx.device, lambda: caption.model_dirs(ctx.work / "caption_models", ctx.smoke))
    figures["caption_models_s"] = round(time.perf_counter() - t0, 1)
    figures["caption_weights"] = "tiny random (smoke)" if ctx.smoke else "random" if random else "real"
    ctx.save(figures, caption_dirs={k: str(v) for k, v in dirs.items()})


def stage_overrides(ctx: Ctx) -> tuple[dict[str, dict], bool]:
    """Stage -> field values for the e2e and naive runs: bench/e2e.py's random-where-missing policy,
    lite models in smoke, the caption models of ``prep``; and whether caption is in."""
    from bench import e2e
    from pipeline.config import parse_set

    over: dict[str, dict] = {}
    for item in e2e.random_where_missing(ctx.device, ctx.smoke):
        stage, field, value = parse_set(item)
        over.setdefault(stage, {})[field] = value
    if ctx.smoke:  # bundled real weights: small on the CPU, and real faces reach every later stage
        for stage, model in (("detect", "retinaface_mobile0.25"), ("pose", "lightweight_headpose"),
                             ("identity", "mobilefacenet")):
            over.setdefault(stage, {}).update(model=model, weights="pretrained")
    dirs = dict(ctx.load("prep").get("caption_dirs") or {})
    if dirs:
        clip = dirs.pop("clip")
        over.setdefault("caption", {}).update(clip_model=clip, model_paths=dirs, captioners=sorted(dirs),
                                              min_score=-1.0)
        if ctx.smoke:
            over["caption"]["max_new_tokens"] = 4
    return over, bool(dirs)


# ---------------------------------------------------------------- e2e

class PeakMemory:
    """Peak GPU memory of this process (torch) next to the whole card's (nvidia-smi samples)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def torch_mib(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20)


def steady_rate(out: Path, n: int, shard: int, executor: str, per_stage: dict) -> tuple[float | None, str]:
    """img/s without start-up and model set-up, and how it was taken. Ray pipelines shards through
    the steps: samples after the first shard / time between the first and the last packed shard.
    The local executor runs the steps one after another: 1 / sum over stages of 1 / stage img/s."""
    if executor == "ray":
        marks = sorted(p.stat().st_mtime for p in (out / "done" / "pack").glob("*.json"))
        if len(marks) < 2 or marks[-1] <= marks[0]:
            return None, "ray: fewer than 2 packed shards"
        return _round((n - shard) / (marks[-1] - marks[0])), "ray: between first and last packed shard"
    rates = [r for r in per_stage.values() if r]
    if not rates:
        return None, "local: no stage timings"
    return _round(1 / sum(1 / r for r in rates)), "local: 1 / sum(1 / stage img/s), pack excluded"


class Progress(threading.Thread):
    """Saves the per-stage rates of the shards finished so far every few seconds: a run cut at its
    budget still leaves figures (marked partial)."""

    def __init__(self, ctx: Ctx, out: Path, t0: float, n: int, size: int, executor: str):
        super().__init__(daemon=True)
        self.ctx, self.out, self.t0, self.base = ctx, out, t0, {"n": n, "size": size, "executor": executor}
        self.stop = threading.Event()

    def run(self) -> None:
        from bench import e2e

        while not self.stop.wait(5.0):
            try:
                rates = e2e.stage_rates(self.out) if (self.out / "stats").is_dir() else {}
                packed = len(list((self.out / "done" / "pack").glob("*.json"))) if rates else 0
            except (OSError, ValueError, KeyError):
                continue
            self.ctx.save({**self.base, "elapsed_s": round(time.perf_counter() - self.t0), "per_stage_img_s": rates,
                           "shards_packed": packed}, partial=True)


def e2e_part(ctx: Ctx, size: int) -> None:
    """Every default stage through the real runner on ``size`` px JPEGs; img/s, busy %, peak memory."""
    import shutil

    from bench import e2e
    from pipeline.config import resolve
    from pipeline.runner import run

    tree = make_tree(ctx, size)
    n, shard = ctx.pick(E2E_N[size]), ctx.pick(E2E_SHARD[size])
    over, with_caption = stage_overrides(ctx)
    executor = ctx.executor or ("local" if ctx.smoke else ("ray" if _importable("ray") else "local"))
    out = ctx.work / f"out{size}"
    shutil.rmtree(out, ignore_errors=True)
    names = [s for s in E2E_STAGES if not (ctx.smoke and s in SMOKE_LEFT_OUT)] + (["caption"] if with_caption else [])
    cfg = resolve(preset="full", flags=dict(source="casia-webface", input=str(tree), out=str(out),
                                            stages=names, shard_size=shard, executor=executor))
    for stage, values in over.items():
        cfg.stage_config.setdefault(stage, {}).update(values)
    sampler = e2e.GpuSampler()
    peak = PeakMemory(ctx.device)
    if ctx.device.startswith("cuda"):
        sampler.start()
    t0 = time.perf_counter()
    progress = Progress(ctx, out, t0, n, size, executor)
    progress.start()
    summary = run(cfg, quiet=True)
    wall = time.perf_counter() - t0
    progress.stop.set()
    progress.join()
    sampler.stop.set()
    provenance = json.loads((out / "run.json").read_text())["provenance"]
    util = sampler.util
    per_stage = e2e.stage_rates(out)
    steady, steady_how = steady_rate(out, n, shard, executor, per_stage)
    figures = {
        "n": n, "size": size, "img_s": _round(n / wall), "wall_s": round(wall, 1),
        "steady_img_s": steady, "executor": executor,
        "gpu_busy_pct": round(sum(u > 0 for u in util) / len(util) * 100) if util else None,
        "gpu_util_mean_pct": round(sum(util) / len(util)) if util else None,
        "peak_gpu_mib_card": max(sampler.mem, default=None), "peak_gpu_mib_torch": peak.torch_mib(),
        "per_stage_img_s": per_stage, "packed": summary["packed"],
        "ok": {k: v["status"].get("ok", 0) for k, v in summary["stages"].items()},
    }
    ctx.save(figures, stages=names, caption_left_out=not with_caption, steady_how=steady_how,
             left_out=[s for s in E2E_STAGES if s not in names],
             weights_random=sorted(k for k, v in provenance.items() if v.get("weights_random")))
    shutil.rmtree(out, ignore_errors=True)


def _importable(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------- naive

def naive_part(ctx: Ctx) -> None:
    """bench/naive.py's composition (per image, batch 1, fp32, files in between) on a few images."""
    import tempfile

    from bench import naive

    faces = use_faces(ctx)
    over, with_caption = stage_overrides(ctx)
    built = naive.build_all(ctx.device, ctx.smoke, not with_caption, over)
    for name in SMOKE_LEFT_OUT if ctx.smoke else ():
        built.pop(name)
    photos = sorted(faces.rglob("*.jpg"))
    n = ctx.pick(NAIVE_N)
    with tempfile.TemporaryDirectory(dir=ctx.work) as tmp:
        naive.run_one(built, photos[0], Path(tmp), -1)  # warm-up
        t0 = time.perf_counter()
        for i in range(n):
            naive.run_one(built, photos[i % len(photos)], Path(tmp), i)
        rate = n / (time.perf_counter() - t0)
    fast = ctx.load("e2e_250").get("figures", {}).get("img_s")  # wall clock, as bench/e2e.py --naive
    ctx.save({"n": n, "img_s": _round(rate), "speedup": _round(fast / rate) if fast else None},
             stages=list(built), speedup_of="e2e_250 wall-clock img/s / naive img/s")


# ---------------------------------------------------------------- stages

def stages_part(ctx: Ctx) -> None:
    """bench/stages_gpu.py's process()-only img/s per model stage at two batch sizes."""
    import torch

    from bench import stages_gpu

    use_faces(ctx)
    batches, repeats = ctx.pick(STAGE_BATCHES), 1 if ctx.smoke else 3
    dtype = "fp32" if ctx.smoke else "bf16"
    cuda = ctx.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    wanted = set(SMOKE_CASES if ctx.smoke else [c[0] for c in stages_gpu.CASES])
    samples = stages_gpu.aligned_samples(max(batches))
    rows: dict[str, dict] = {}
    for label, name, config in stages_gpu.CASES:
        if label not in wanted:
            continue
        try:
            stage, weights = stages_gpu.build(name, config, ctx.device, dtype)
            rates = {}
            for b in batches:
                try:
                    rates[str(b)] = _round(stages_gpu.measure(stage, samples, b, repeats, sync))
                except torch.cuda.OutOfMemoryError:
                    rates[str(b)] = "OOM"
                    torch.cuda.empty_cache()
            peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
            rows[label] = {"weights": weights, "img_s": rates, "peak_gib": peak}
        except Exception as exc:  # one broken stage is a row, not a lost part
            rows[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        stage = None
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        ctx.save({"batches": batches, "dtype": dtype, "rows": rows, **combined(rows, batches, ctx.smoke)})


def combined(rows: dict, batches: list[int], smoke: bool) -> dict:
    """The default GPU stages run one after another on each image: 1 / sum(1 / rate) at the largest batch."""
    cases = SMOKE_CASES if smoke else DEFAULT_CASES
    rates = [rows.get(c, {}).get("img_s", {}).get(str(batches[-1])) for c in cases]
    if not all(isinstance(r, (int, float)) and r > 0 for r in rates):
        return {}
    return {"combined_img_s": _round(1 / sum(1 / r for r in rates)), "combined_of": cases}


# ---------------------------------------------------------------- trainers

def dense_face_part(ctx: Ctx) -> None:
    """bench/train_dense_face.py's step time and peak memory (SD 2.1 size on the GPU, tiny in smoke)."""
    import torch

    from bench import train_dense_face as bench
    from training.dense_face import DenseFace, DenseFaceConfig
    from training.sd import sd21_components, tiny_sd_components

    device = torch.device(ctx.device)
    if ctx.smoke:
        cfg = DenseFaceConfig(dense_size=16, id_dim=512, id_hidden=32, head_channels=16, gradient_checkpointing=True)
    else:  # as bench/train_dense_face.py runs by default
        cfg = DenseFaceConfig(id_dim=512, frozen_dtype="bf16", gradient_checkpointing=True)
    parts = tiny_sd_components if ctx.smoke else (lambda: sd21_components(torch.bfloat16))
    model = built_on(ctx.device, lambda: DenseFace(parts(), cfg)).to(device).train()
    res, steps, warmup = (64, 1, 0) if ctx.smoke else (512, 3, 1)
    rows: dict = {}
    for n in ctx.pick(DENSE_FACE_BATCHES):
        try:
            sec, peak = bench.measure(model, n, res, steps, warmup, device)
            rows[str(n)] = {"s_step": round(sec, 3), "img_s": round(n / sec, 2), "peak_gib": _gib(peak)}
        except torch.cuda.OutOfMemoryError:
            rows[str(n)] = {"s_step": "OOM"}
            torch.cuda.empty_cache()
        ctx.save({"res": res, "batches": rows}, gradient_checkpointing=cfg.gradient_checkpointing)


def portraitbooth_part(ctx: Ctx) -> None:
    """bench/train_portraitbooth.py's step time (t > R_t and t <= R_t) and peak memory."""
    from dataclasses import replace

    import torch

    from bench import train_portraitbooth as bench
    from training.portraitbooth import PortraitBooth, PortraitBoothConfig
    from training.sd import tiny_sd_components

    device = torch.device(ctx.device)
    cfg = PortraitBoothConfig(id_dim=512, gradient_checkpointing=True)  # bench/train_portraitbooth.py's default
    cfg = replace(cfg, mlp_hidden=32) if ctx.smoke else replace(cfg, frozen_dtype="bf16")
    parts = tiny_sd_components if ctx.smoke else bench.sd15_components
    model = built_on(ctx.device, lambda: PortraitBooth(parts(), cfg)).to(device).train()
    res, steps, warmup = (64, 1, 0) if ctx.smoke else (512, 3, 1)
    rows: dict = {}
    for n in ctx.pick(PORTRAITBOOTH_BATCHES):
        try:
            plain, _ = bench.measure(model, n, res, steps, warmup, device, with_id=False)
            sec, peak = bench.measure(model, n, res, steps, warmup, device, with_id=True)
            rows[str(n)] = {"s_step_plain": round(plain, 3), "s_step_id": round(sec, 3),
                            "img_s_id": round(n / sec, 2), "peak_gib_id": _gib(peak)}
        except torch.cuda.OutOfMemoryError:
            rows[str(n)] = {"s_step_id": "OOM"}
            torch.cuda.empty_cache()
        ctx.save({"res": res, "batches": rows}, gradient_checkpointing=cfg.gradient_checkpointing)


def _round(value: float) -> float:
    """Three significant figures (CPU smoke rates are far below 1 img/s)."""
    return float(f"{value:.3g}")


def _gib(value: float) -> float | None:
    return None if value != value else round(value, 2)  # NaN (CPU) -> None


def _with_name(name: str, fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def run(ctx: Ctx) -> None:
        ctx.part = name
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        fn(ctx)
    return run


PARTS: dict[str, Callable[[Ctx], None]] = {name: _with_name(name, fn) for name, fn in (
    ("gpu_tests", gpu_tests), ("prep", prep), ("e2e_250", lambda c: e2e_part(c, 250)),
    ("e2e_1024", lambda c: e2e_part(c, 1024)), ("naive", naive_part), ("stages", stages_part),
    ("dense_face", dense_face_part), ("portraitbooth", portraitbooth_part))}
