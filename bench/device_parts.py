"""The parts of bench/device_check.py: each measures with the existing bench scripts' functions and
saves its figures (``Ctx.save``) the moment it has them. One part runs per forked child process."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

from bench.device_ctx import (DEFAULT_CASES, E2E_N, E2E_SHARD, E2E_STAGES, NAIVE_N, ROOT, SMOKE_CASES,
                              SMOKE_LEFT_OUT, STAGE_BATCHES, Ctx, round3, built_on, machine, use_faces, versions)
from bench.device_train import dense_face_part, portraitbooth_part

__all__ = ["PARTS", "Ctx", "machine", "versions"]


# ---------------------------------------------------------------- gpu_tests

def gpu_tests(ctx: Ctx) -> None:
    """pytest -m gpu over the suite (one file in smoke); pass/fail/skip counts and the failing names."""
    junit = ctx.work / "junit.xml"
    junit.unlink(missing_ok=True)
    targets = ["tests/test_identity.py"] if ctx.smoke else ["tests"]
    # A module that cannot import there (pipeline/readers/sql.py needs duckdb, which a device call cannot
    # carry) is an error row; the other modules' tests still run.
    args = ["-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            f"--junitxml={junit}", *targets]
    rc = _pytest_in_process(args, ctx.out / "gpu_tests.txt")
    if not junit.exists():
        raise RuntimeError(f"pytest wrote no junit file (exit {rc}); see gpu_tests.txt")
    figures, failing, uncollected = junit_counts(junit)
    ctx.save({**figures, "pytest_exit": rc}, failing=failing[:30], not_importable=uncollected)


def junit_counts(junit: Path) -> tuple[dict, list[str], list[str]]:
    """(counts, failing test ids, modules that did not import) from pytest's junit XML. A module that
    does not import (a package the device lacks) is not a failed GPU test: it is counted apart."""
    suites = ET.parse(junit).getroot()
    suite = suites if suites.tag == "testsuite" else suites[0]
    cases = list(suite.iter("testcase"))
    uncollected = [c.get("name") for c in cases if (e := c.find("error")) is not None
                   and e.get("message") == "collection failure"]
    failing = [f"{c.get('classname')}::{c.get('name')}" for c in cases if c.find("failure") is not None
               or (c.find("error") is not None and c.get("name") not in uncollected)]
    total, skipped = int(suite.get("tests", 0)) - len(uncollected), int(suite.get("skipped", 0))
    failed, errors = int(suite.get("failures", 0)), int(suite.get("errors", 0)) - len(uncollected)
    return ({"total": total, "passed": total - skipped - failed - errors, "failed": failed, "errors": errors,
             "skipped": skipped, "modules_not_importable": len(uncollected)}, failing, uncollected)


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
    """img/s without start-up and model set-up, and how it was taken. Ray and the process executor
    pipeline shards through the steps: samples after the first shard / time between the first and
    the last packed shard.
    The local executor runs the steps one after another: 1 / sum over stages of 1 / stage img/s."""
    if executor in ("ray", "processes"):
        marks = sorted(p.stat().st_mtime for p in (out / "done" / "pack").glob("*.json"))
        if len(marks) < 2 or marks[-1] <= marks[0]:
            return None, f"{executor}: fewer than 2 packed shards"
        return round3((n - shard) / (marks[-1] - marks[0])), f"{executor}: between first and last packed shard"
    rates = [r for r in per_stage.values() if r]
    if not rates:
        return None, "local: no stage timings"
    return round3(1 / sum(1 / r for r in rates)), "local: 1 / sum(1 / stage img/s), pack excluded"


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
    from pipeline.core.runner import run

    tree = make_tree(ctx, size)
    n, shard = ctx.pick(E2E_N[size]), ctx.pick(E2E_SHARD[size])
    over, with_caption = stage_overrides(ctx)
    # without Ray (it does not fit the device carry) the process executor, as a CPU-only machine runs
    executor = ctx.executor or ("ray" if not ctx.smoke and _importable("ray") else "processes")
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
    fallback = ""
    try:
        summary = run(cfg, quiet=True)
    except Exception as exc:  # noqa: BLE001 - first GPU run of this executor: keep the figures coming
        if executor != "processes":
            raise
        fallback = f"processes failed ({type(exc).__name__}: {str(exc)[:300]}); measured with local"
        shutil.rmtree(out, ignore_errors=True)
        cfg.executor = executor = "local"
        t0 = time.perf_counter()
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
        "n": n, "size": size, "img_s": round3(n / wall), "wall_s": round(wall, 1),
        "steady_img_s": steady, "executor": executor,
        "gpu_busy_pct": round(sum(u > 0 for u in util) / len(util) * 100) if util else None,
        "gpu_util_mean_pct": round(sum(util) / len(util)) if util else None,
        "peak_gpu_mib_card": max(sampler.mem, default=None), "peak_gpu_mib_torch": peak.torch_mib(),
        "per_stage_img_s": per_stage, "packed": summary["packed"],
        "ok": {k: v["status"].get("ok", 0) for k, v in summary["stages"].items()},
    }
    ctx.save(figures, stages=names, caption_left_out=not with_caption, steady_how=steady_how, fallback=fallback,
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
    ctx.save({"n": n, "img_s": round3(rate), "speedup": round3(fast / rate) if fast else None},
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
                    rates[str(b)] = round3(stages_gpu.measure(stage, samples, b, repeats, sync))
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
    return {"combined_img_s": round3(1 / sum(1 / r for r in rates)), "combined_of": cases}


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
