"""``pipeline sql``: stage views, the joined ``samples`` view, the audit view, output formats."""
from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from pipeline.readers import audit, sql
from tests.test_audit import MISFILED, build_out, copy_out


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = build_out(tmp_path_factory)
    audit.run_audit(out)
    return out


def test_stage_views_match_the_manifests(out):
    for stage in ("source", "detect", "pose", "identity"):
        t = sql.query(out, f"SELECT key, status FROM {stage} ORDER BY key")
        assert t.to_pylist() == sorted(pq.read_table(out / "manifests" / stage, columns=["key", "status"])
                                       .to_pylist(), key=lambda r: r["key"])


def test_samples_view_prefixes_columns(out):
    t = sql.query(out, "SELECT * FROM samples")
    names = set(t.column_names)
    assert {"key", "identity", "detect_score", "pose_yaw", "landmarks_yaw", "identity_embedding",
            "source_sha256", "audit_outlier"} <= names
    assert "yaw" not in names and "source_identity" not in names and t.num_rows == 20
    row = sql.query(out, "SELECT pose_yaw FROM samples WHERE key = '0000001_001'").to_pylist()[0]
    direct = [r for r in pq.read_table(out / "manifests" / "pose").to_pylist() if r["key"] == "0000001_001"]
    assert row["pose_yaw"] == pytest.approx(direct[0]["yaw"])


def test_docs_examples_run(out):
    most = sql.query(out, "SELECT identity, count(*) AS outliers FROM audit WHERE outlier "
                          "GROUP BY identity ORDER BY outliers DESC, identity LIMIT 10").to_pylist()
    assert most == [{"identity": "0000001", "outliers": 1}]
    yaw = sql.query(out, "SELECT identity, count(*) AS n, round(avg(pose_yaw), 1) AS mean_yaw, "
                         "round(min(pose_yaw), 1) AS min_yaw, round(max(pose_yaw), 1) AS max_yaw "
                         "FROM samples WHERE pose_status = 'ok' GROUP BY identity ORDER BY identity")
    assert yaw.num_rows == 5 and all(r["min_yaw"] <= r["mean_yaw"] <= r["max_yaw"] for r in yaw.to_pylist())
    merges = sql.query(out, "SELECT identity_a, identity_b FROM audit_merges").to_pylist()
    assert merges == [{"identity_a": "0000003", "identity_b": "0000004"}]


def test_no_audit_view_without_audit(out, tmp_path):
    bare = copy_out(out, tmp_path / "bare")
    con = sql.connect(bare)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert "audit" not in views and "samples" in views and "detect" in views
    assert not any(c.startswith("audit_") for c in sql.columns(con, "samples"))


def test_read_only(out, tmp_path):
    for bad in ("COPY (SELECT 1) TO '/tmp/x.csv'", "CREATE TABLE t AS SELECT 1", "ATTACH 'x.db'",
                "SELECT 1; DROP VIEW samples", "INSTALL httpfs"):
        with pytest.raises(ValueError, match="only SELECT"):
            sql.query(out, bad)
    with pytest.raises(ValueError, match="read-only"):
        sql.write_result(sql.query(out, "SELECT 1 AS a"), "csv", out / "x.csv", out=out)
    assert not list(out.glob("*.duckdb")) and not (out / "x.csv").exists()


def test_output_formats(out, tmp_path):
    t = sql.query(out, f"SELECT key, identity, audit_outlier, detect_points5 FROM samples WHERE key = '{MISFILED}'")
    buf = io.StringIO()
    sql.write_result(t, "csv", None, stream=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0] == '"key","identity","audit_outlier","detect_points5"' and MISFILED in lines[1]
    assert "[" in lines[1]  # list columns as JSON text
    sql.write_result(t, "parquet", tmp_path / "r.parquet")
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == t.to_pylist()
    with pytest.raises(ValueError, match="--output"):
        sql.write_result(t, "parquet", None)
    buf = io.StringIO()
    sql.write_result(t, "table", None, stream=buf)
    assert MISFILED in buf.getvalue() and "audit_outlier" in buf.getvalue()


def test_keys_where(out):
    keys = sql.keys_where(out, "audit_exclude_from_pairing").column("key").to_pylist()
    assert keys == ["0000001_005", "0000002_005"]
    with pytest.raises(ValueError, match="single"):
        sql.keys_where(out, "true; SELECT 1")
