"""One contract test over every registered stage: build, check, run on real faces plus a bad
image, and compare what came out with what the stage declares (columns, files, provenance).

Upstream stages run first, in run order, exactly as the runner chains them (frames, reads).
Stages whose weights cannot exist offline run their real architecture with random weights
(restore: tiny CodeFormer; parsing: BiSeNet; caption/detail_caption: tiny random HF models),
which is what their rows then say (``weights_random``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import stages as registry
from pipeline.config import build_stage
from pipeline.core.schedule import resolve_stage_names
from stages.base import ERROR, OK, Result, Sample
from tests.conftest import LFW

BUILTIN = ["detect", "restore", "landmarks", "pose", "parsing", "identity", "expression", "attributes",
           "quality", "caption", "detail_caption", "consistency"]
RANDOM = {"restore", "parsing", "caption", "detail_caption"}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> dict[str, dict]:
    """Offline configs: bundled real weights where they exist, random weights elsewhere."""
    from tests.fixtures import tiny_hf
    from tests.test_detail_caption import save_tiny_qwen2_vl

    hf = tiny_hf.tiny_models(tmp_path_factory.mktemp("hf"))
    vlm = save_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "qwen2vl")
    return {
        "detect": {"model": "retinaface_mobile0.25", "device": "cpu"},
        "restore": {"arch": "tiny", "weights": "random", "device": "cpu"},
        "landmarks": {},
        "pose": {"model": "lightweight_headpose", "device": "cpu"},
        "parsing": {"weights": "random", "device": "cpu", "batch_size": 2},
        "identity": {"model": "mobilefacenet", "device": "cpu"},
        "expression": {"device": "cpu"},
        "attributes": {},
        "quality": {},
        "caption": {"model_paths": {"blip_base": str(hf["blip_base"]), "blip_large": str(hf["blip_large"])},
                    "clip_model": str(hf["clip"]), "device": "cpu", "min_score": -1.0, "max_new_tokens": 6,
                    "n_beam": 1, "n_sample": 1, "num_beams": 1},
        "detail_caption": {"model": str(vlm), "device": "cpu", "max_new_tokens_short": 4,
                           "max_new_tokens_detail": 6, "image_size": 112},
        "consistency": {},
    }


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    if not LFW.is_dir():
        pytest.skip(f"real faces missing: {LFW}")
    people = sorted(p for p in LFW.iterdir() if p.is_dir())[:2]
    return [np.asarray(Image.open(sorted(p.glob("*.jpg"))[0]).convert("RGB")) for p in people]


def run_chain(name: str, recipes: dict, faces: list[np.ndarray]) -> tuple[object, list[Sample], list[Result]]:
    """Run ``name`` after everything it reads (and the frame producers before it), like the runner."""
    chain = [n for n in registry.ORDER if n in set(resolve_stage_names([name])) |
             ({"detect"} if registry.ORDER.index(name) > registry.ORDER.index("detect") else set())]
    keys = [f"k{i}" for i in range(len(faces))] + ["bad"]
    frames: dict[str, np.ndarray | None] = {k: im for k, im in zip(keys, faces)}
    frames["bad"] = None
    done: dict[str, dict[str, Result]] = {}
    frame_name = "source"
    for stage_name in chain:
        stage = build_stage(stage_name, recipes[stage_name])
        stage.check()
        samples = []
        for key in keys:
            # the bad image gets a good sample's upstream rows, so it reaches the stage itself
            src = keys[0] if key == "bad" else key
            upstream = {n: done[n][src] for n in done if done[n][src].status == OK}
            image = frames[key] if stage.needs_image else None
            samples.append(Sample(key=key, identity="Person_A", image=image, frame=frame_name,
                                  upstream=upstream, meta={"files": {}}))
        results = stage.process(samples)
        done[stage_name] = dict(zip(keys, results))
        if type(stage).produces_frame:
            frame_name = type(stage).produces_frame
            frames = {k: (r.frame if r.status == OK else None) for k, r in zip(keys, results)}
    return stage, samples, results


@pytest.mark.parametrize("name", BUILTIN)
def test_stage_keeps_its_declaration(name, recipes, faces):
    assert name in registry.ORDER
    stage, samples, results = run_chain(name, recipes, faces)
    cls = type(stage)
    assert len(results) == len(samples)
    declared = set(cls.schema.names)
    assert set(cls.nan_columns) <= declared, "nan_columns must be declared columns"
    assert declared.isdisjoint({"key", "status", "error", "model", "weights_sha256"}), "common columns redeclared"
    for sample, res in zip(samples, results):
        assert res.status in ("ok", "skipped", "error") and (res.status == OK) == (not res.error), sample.key
        if res.status != OK:
            continue
        assert set(res.columns) <= declared, f"undeclared columns {set(res.columns) - declared}"
        assert set(res.files) == set(cls.files), f"files {sorted(res.files)} != declared {cls.files}"
        assert all(isinstance(v, bytes) and v for v in res.files.values()), "files must come out encoded"
        assert (res.frame is not None) == bool(cls.produces_frame)
    ok = [r for s, r in zip(samples, results) if s.key != "bad" and r.status == OK]
    assert ok, f"{name}: no real face came through ({[r.error for r in results]})"
    bad = results[-1]
    if cls.needs_image:
        assert bad.status == ERROR and bad.error == "bad_image"
    prov = stage.provenance()
    assert prov.model and prov.weights_random == (name in RANDOM)
    if not prov.weights_random and name not in ("landmarks", "consistency", "quality"):
        assert len(prov.weights_sha256) == 64


@pytest.mark.parametrize("name", BUILTIN)
def test_limits_name_real_fields_and_hold_for_the_defaults(name):
    """Each declared limit is a config field of the stage, and the default config keeps it; a value
    outside it is refused by check() before any work, naming the field."""
    import dataclasses

    from stages import limits

    cls = registry.stage_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    rules = {k: v for c in reversed(cls.__mro__) for k, v in c.__dict__.get("limits", {}).items()}
    assert set(rules) <= fields, f"limits on unknown fields {set(rules) - fields}"
    stage = cls()
    for field, rule in rules.items():
        assert limits.allowed(getattr(stage, field), rule), (field, rule)
    field, rule = next(iter(rules.items()))
    bad = "no such choice" if isinstance(rule, tuple) else float("nan")
    with pytest.raises(ValueError, match=f"^{field} must be"):
        dataclasses.replace(stage, **{field: bad}).check()


def test_limits_rules():
    from stages.limits import allowed

    assert allowed(0.5, "(0, 1)") and not allowed(0.0, "(0, 1)") and allowed(0.0, "[0, 1)")
    assert allowed(1.0, "(0, 1]") and not allowed(1.0, "[0, 1)") and allowed(1e9, "[1, inf)")
    assert not allowed(float("nan"), "[0, 1]") and not allowed(True, "[0, 1]") and not allowed("a", "[0, 1]")
    assert allowed(["a", "b"], ("a", "b", "c")) and not allowed(["a", "z"], ("a", "b"))
    with pytest.raises(ValueError, match="bad interval"):
        allowed(1, "0..1")


def test_every_registered_stage_is_covered():
    assert [n for n in registry.ORDER if registry.MODULES[n].startswith("stages.")] == BUILTIN


def test_sample_gives_detects_points_and_box_in_its_own_frame():
    """points5 in the source photo, points5_crop in a crop; the box only in the source photo;
    None without a detect row or with a non-finite value."""
    det = Result(columns={"points5": list(range(10)), "points5_crop": [0.5] * 10, "box": [1, 2, 3, 4]})
    source = Sample(key="k", identity="i", image=None, upstream={"detect": det})
    crop = Sample(key="k", identity="i", image=None, frame="aligned", upstream={"detect": det})
    assert source.points5().shape == (5, 2) and source.points5()[4, 1] == 9
    assert np.all(crop.points5() == 0.5) and crop.box() is None
    assert list(source.box()) == [1, 2, 3, 4]
    assert Sample(key="k", identity="i", image=None).points5() is None
    broken = Result(columns={"points5": [float("nan")] * 10, "box": [1, 2, 3]})
    assert Sample(key="k", identity="i", image=None, upstream={"detect": broken}).points5() is None
    assert Sample(key="k", identity="i", image=None, upstream={"detect": broken}).box() is None


def test_nan_or_inf_in_a_models_output_becomes_a_non_finite_row():
    """The framework's guard (Stage.process): a NaN or inf anywhere in a row's columns or file
    arrays ends as a ``non_finite_output`` error row, so none reaches a manifest or a shard;
    finite rows, integer arrays, a stage's declared ``nan_columns`` and rows it already failed pass."""
    from dataclasses import dataclass
    from typing import ClassVar

    from stages.base import NON_FINITE, SKIPPED, Stage

    nan, inf = float("nan"), float("inf")
    outputs = {
        "finite": Result(columns={"v": 1.0, "l": [[0.5]]}, files={"x.npy": np.zeros(2, np.float32)}),
        "column": Result(columns={"v": nan}, files={"x.npy": np.zeros(2, np.float32)}),
        "nested": Result(columns={"l": [[0.5, -inf]]}, files={"x.npy": np.zeros(2, np.float32)}),
        "numpy": Result(columns={"v": np.float32(nan)}, files={"x.npy": np.zeros(2, np.float32)}),
        "file": Result(columns={"v": 1.0}, files={"x.npy": np.array([0.0, inf], np.float32)}),
        "labels": Result(columns={"v": 1.0}, files={"x.npy": np.array([255], np.uint8)}),
        "declared": Result(columns={"iou": [0.5, nan]}, files={"x.npy": np.zeros(2, np.float32)}),
        "skipped": Result.fail("no_face", SKIPPED),
    }

    @dataclass
    class Toy(Stage):
        name: ClassVar[str] = "toy"
        files: ClassVar[tuple[str, ...]] = ("x.npy",)
        nan_columns: ClassVar[tuple[str, ...]] = ("iou",)  # NaN is a value there

        def compute(self, batch: list[Sample]) -> list[Result]:
            return [outputs[s.key] for s in batch]

    image = np.zeros((8, 8, 3), np.uint8)
    got = {s: r for s, r in zip(outputs, Toy().process([Sample(k, "i", image) for k in outputs]))}
    assert {k: (r.status, r.error) for k, r in got.items()} == {
        "finite": (OK, ""), "column": (ERROR, NON_FINITE), "nested": (ERROR, NON_FINITE),
        "numpy": (ERROR, NON_FINITE), "file": (ERROR, NON_FINITE), "labels": (OK, ""), "declared": (OK, ""),
        "skipped": (SKIPPED, "no_face")}
    assert not got["column"].columns and not got["column"].files


@pytest.mark.parametrize("name", ["expression", "attributes"])
def test_a_real_stage_whose_net_returns_nan_writes_a_non_finite_row(name, recipes, faces, monkeypatch):
    """Fault injection, not a mock: the stage's real net runs, then its output is replaced by NaN
    (what an fp16 overflow gives); the stage has no check of its own, the framework's guard makes
    the row."""
    from stages.base import NON_FINITE

    method = {"expression": "regress", "attributes": "emotion_probs"}[name]
    real = getattr(registry.stage_class(name), method)
    monkeypatch.setattr(registry.stage_class(name), method,
                        lambda self, x: np.full_like(real(self, x), np.nan))
    _, samples, results = run_chain(name, recipes, faces)
    real_faces = [r for s, r in zip(samples, results) if s.key != "bad"]
    assert real_faces and all((r.status, r.error) == (ERROR, NON_FINITE) for r in real_faces)
