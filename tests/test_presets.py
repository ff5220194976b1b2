"""Presets: every shipped one parses; the lite quickstart runs offline; full says what is missing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import stages
from pipeline.config import build_stage, presets, resolve
from stages.models import registry

OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": ""}


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_preset_parses_and_builds(name):
    cfg = resolve(preset=name)
    assert cfg.preset == name and cfg.stages
    for stage in cfg.stages:
        build_stage(stage, cfg.stage_config.get(stage, {}))


def test_lite_uses_only_bundled_weights():
    cfg = resolve(preset="lite")
    assert "restore" not in cfg.stages and "caption" not in cfg.stages
    for stage, values in cfg.stage_config.items():
        if "model" in values and values["model"] in registry.REGISTRY:
            assert registry.get(values["model"]).bundled, stage


def test_full_without_weights_lists_every_missing_file(tmp_path):
    from pipeline.core.runner import MissingWeightsError, run

    cfg = resolve(flags={"source": "sample", "out": str(tmp_path / "out"), "weights_dir": str(tmp_path / "w"),
                         "executor": "local"})
    with pytest.raises(MissingWeightsError) as err:
        run(cfg, quiet=True)
    text = str(err.value)
    for name in ("retinaface_resnet50", "codeformer", "parsing_bisenet", "arcface_irse50"):
        assert name in text
    assert str(tmp_path / "w") in text and "pipeline weights fetch" in text
    assert not (tmp_path / "out").exists()


def test_quickstart_offline_from_empty_dir(tmp_path):
    env = {**os.environ, **OFFLINE, "FACEWEAVE_WEIGHTS": str(tmp_path / "no-weights")}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--source", "sample", "--out", "out", "--preset", "lite"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert json.loads((out / "shards" / "index.json").read_text())["samples"] == 9
    for stage in resolve(preset="lite").stages:
        rows = pq.read_table(out / "manifests" / stage).to_pylist()
        assert all(r["status"] == "ok" for r in rows), stage
        assert not any(r["weights_random"] for r in rows), stage
        bundled = {registry.sha256_of(registry.path_of(n)) for n, s in registry.REGISTRY.items() if s.bundled}
        if stage != "landmarks":  # mediapipe's own bundled tflite
            assert {r["weights_sha256"] for r in rows} <= bundled | {""}, stage
    assert not (tmp_path / "no-weights").exists()  # the weights directory is never written
