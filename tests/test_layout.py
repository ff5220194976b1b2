"""pipeline/layout.py names every path of an OUT folder: a real run writes exactly those."""
from __future__ import annotations

import pytest

from pipeline import layout
from pipeline.core.manifest import ShardOutputs
from tests.conftest import lite_run_once


@pytest.fixture(scope="module")
def lite_out(tmp_path_factory):
    from tests.test_audit import PLANTED

    return lite_run_once(tmp_path_factory, "planted-run", PLANTED)  # the audit tests' run, built once


def test_a_run_writes_where_the_layout_says(lite_out):
    out = lite_out
    assert layout.run_json(out).is_file() and layout.config_yaml(out).is_file()
    assert layout.plan_table(out).is_file() and layout.plan_info(out).is_file()
    assert layout.shard_index(out).is_file() and layout.wids_index(out).is_file()
    tars = layout.shard_tars(out)
    assert tars and all(t.parent == layout.shards(out) for t in tars)
    shards = [t.stem for t in tars]
    for shard in shards:
        assert layout.pack_marker(out, shard).is_file() and layout.shard_tar(out, shard) in tars
    stages = sorted(p.name for p in layout.manifests(out).iterdir())
    assert "source" in stages and "detect" in stages
    for stage in stages:
        for shard in shards:
            outs = ShardOutputs(out, stage, shard)
            assert outs.manifest.parent == layout.manifests(out, stage) and outs.manifest.is_file()
            assert outs.marker.parent == layout.done(out, stage) and outs.marker.is_file()
            assert outs.stats.parent == layout.stats(out, stage) and outs.stats.is_file()
    # nothing else at the top: every entry is one the layout names
    named = {p.name for p in (layout.run_json(out), layout.config_yaml(out), layout.plan_table(out).parent,
                              layout.manifests(out), layout.payloads(out), layout.done(out),
                              layout.stats(out), layout.journal(out), layout.shards(out),
                              layout.audit(out), layout.report(out), layout.card(out), layout.lock(out),
                              layout.progress(out))}
    assert {p.name for p in out.iterdir()} <= named
