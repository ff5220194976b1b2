"""The core's file primitives: tar hashes taken while writing, single-file manifest reads, plan rows."""
from __future__ import annotations

import hashlib
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.manifest import TarWriter, read_manifest, read_marker, write_done
from pipeline.core.plan import PLAN_SCHEMA, Plan


def test_tar_writer_hashes_what_it_wrote(tmp_path):
    path = tmp_path / "payloads" / "x.tar"
    writer = TarWriter(path)
    for i in range(5):
        writer.add(f"k{i}.bin", bytes([i]) * (1000 + i))
    assert writer.sha256 == ""
    writer.close()
    assert writer.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with tarfile.open(path) as tar:
        assert [m.name for m in tar.getmembers()] == [f"k{i}.bin" for i in range(5)]
    write_done(tmp_path, tmp_path / "done" / "x.json", "lin", [path], [writer])
    assert read_marker(tmp_path / "done" / "x.json")["files"]["payloads/x.tar"]["sha256"] == writer.sha256


def test_tar_writer_abort_leaves_nothing(tmp_path):
    writer = TarWriter(tmp_path / "x.tar")
    writer.add("a.bin", b"a")
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_read_manifest_columns(tmp_path):
    pq.write_table(pa.table({"key": ["a", "b"], "v": [1, 2]}), tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet").to_pylist() == [{"key": "a", "v": 1}, {"key": "b", "v": 2}]
    assert read_manifest(tmp_path / "m.parquet", columns=["v"]).column_names == ["v"]


def test_plan_rows_of_a_shard_in_plan_order_wherever_they_sit():
    shards = ["00000", "00000", "00001", "00000", "00002", "00001"]  # a refresh may append to any shard
    rows = [{"key": f"k{i}", "identity": "p", "location": f"{i}.jpg", "shard": s, "meta": "{}", "error": "",
             "size": i, "mtime_ns": 0} for i, s in enumerate(shards)]
    plan = Plan({}, pa.Table.from_pylist(rows, schema=PLAN_SCHEMA))
    assert [r["key"] for r in plan.rows("00000")] == ["k0", "k1", "k3"]
    assert [r["key"] for r in plan.rows("00001")] == ["k2", "k5"]
    assert plan.rows("00002") == [rows[4]]
    assert plan.rows("00009") == []
