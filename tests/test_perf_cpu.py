"""Performance features checked on the CPU: fusion changes nothing, OOM halves the batch."""
from __future__ import annotations

import pyarrow.parquet as pq

from pipeline.runner import run
from tests.test_kill import assert_same_outputs
from tests.test_runner import cfg_for, plugin_stages  # noqa: F401  (registers the plugin stages)


def test_fused_and_unfused_runs_write_the_same_outputs(casia_tree, tmp_path):
    fused, unfused = tmp_path / "fused", tmp_path / "unfused"
    run(cfg_for(casia_tree, fused), quiet=True)
    run(cfg_for(casia_tree, unfused, fuse=False), quiet=True)
    assert_same_outputs(unfused, fused)


def test_out_of_memory_halves_the_batch_and_loses_nothing(casia_tree, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "out"
    run(cfg_for(casia_tree, ref), quiet=True)
    monkeypatch.setenv("FACEWEAVE_TEST_OOM_ABOVE", "1")  # colour's batch_size is 3: every batch "OOMs"
    run(cfg_for(casia_tree, out), quiet=True)
    assert_same_outputs(out, ref)
    rows = pq.read_table(out / "manifests" / "colour").to_pylist()
    assert not any(r["error"].startswith("out_of_memory") for r in rows)
