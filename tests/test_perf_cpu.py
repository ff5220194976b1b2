"""Performance features checked on the CPU: fusion changes nothing, OOM halves the batch."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.runner import run
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


@pytest.mark.slow
def test_multi_node_ray_cluster_gives_identical_outputs(casia_tree, tmp_path, monkeypatch):
    """A head and two worker nodes (ray.cluster_utils), joined through --ray-address."""
    import ray
    from ray.cluster_utils import Cluster

    ref, out = tmp_path / "ref", tmp_path / "out"
    run(cfg_for(casia_tree, ref), quiet=True)
    monkeypatch.setenv("FACEWEAVE_PLUGINS", "tests.plugin_stages")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run(cfg_for(casia_tree, out, executor="ray", ray_address=cluster.address), quiet=True)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 3
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert_same_outputs(out, ref)


@pytest.mark.slow
def test_gpu_and_cpu_steps_overlap_by_shard(casia_tree, tmp_path, monkeypatch):
    """A (faked) GPU group and the CPU group after it work on different shards at the same time."""
    import json

    ref, out = tmp_path / "ref", tmp_path / "out"
    run(cfg_for(casia_tree, ref), quiet=True)
    monkeypatch.setenv("FACEWEAVE_PLUGINS", "tests.plugin_stages")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    monkeypatch.setenv("FACEWEAVE_TEST_SLEEP", "1.5")  # GPU work (9 ok samples) outlasts actor start-up
    run(cfg_for(casia_tree, out, "center.device=cuda", executor="ray", num_cpus=2, num_gpus=1), quiet=True)
    assert_same_outputs(out, ref)  # device is a runtime field: same lineage, same bytes
    span = {stage: [json.loads(p.read_text()) for p in (out / "stats" / stage).glob("*.json")]
            for stage in ("center", "colour")}
    last_center = max(s["finished"] for s in span["center"])
    first_colour = min(s["started"] for s in span["colour"])
    assert first_colour < last_center, f"the CPU group waited for the whole GPU step ({first_colour - last_center:.2f} s)"
