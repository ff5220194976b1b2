"""Identity-purity audit: synthetic embeddings, then a real lite run (MobileFaceNet) on lfw10.

The real run's tree is CASIA-like with planted problems: a George W. Bush photo filed under
Colin Powell, a Tony Blair photo filed twice under two names, Donald Rumsfeld split across two
folders, and a clean Hugo Chavez folder. ``build_out`` is shared with the sql and export tests.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.readers import audit
from schemas import audit as schema
from tests.conftest import lite_run_once

# identity folder -> (lfw person, photo number) in file order
PLANTED: dict[str, list[tuple[str, int]]] = {
    "0000001": [("Colin_Powell", i) for i in (1, 2, 3, 4)] + [("George_W_Bush", 1)],
    "0000002": [("Tony_Blair", i) for i in (1, 2, 3, 4)] + [("Tony_Blair", 1)],
    "0000003": [("Donald_Rumsfeld", i) for i in (1, 2, 3)],
    "0000004": [("Donald_Rumsfeld", i) for i in (4, 5, 6)],
    "0000005": [("Hugo_Chavez", i) for i in (1, 2, 3, 4)],
}
MISFILED, DUPLICATE, ORIGINAL = "0000001_005", "0000002_005", "0000002_001"


def build_out(tmp_path_factory) -> Path:
    """A lite run (478-point mesh) over the planted tree, built once per test session."""
    return lite_run_once(tmp_path_factory, "planted-run", PLANTED)


def copy_out(out: Path, dst: Path) -> Path:
    """A copy of an output folder without its audit (to test what needs no audit)."""
    shutil.copytree(out, dst, ignore=shutil.ignore_patterns(schema.AUDIT_DIR))
    return dst


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    out = build_out(tmp_path_factory)
    summary = audit.run_audit(out)
    rows = {r["key"]: r for r in pq.read_table(out / "audit" / schema.IDENTITY_FILE).to_pylist()}
    merges = pq.read_table(out / "audit" / schema.MERGES_FILE).to_pylist()
    return out, summary, rows, merges


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_robust_centroid_ignores_a_minority():
    rng = np.random.default_rng(0)
    person, other = _unit(rng.normal(size=64)), _unit(rng.normal(size=64))
    x = _unit(np.vstack([person + 0.3 * rng.normal(size=(6, 64)) / 8, other + 0.3 * rng.normal(size=(2, 64)) / 8]))
    c, w = audit.robust_centroid(x.astype(np.float32))
    plain = _unit(x.mean(axis=0))
    assert c @ person > 0.98 > plain @ person and w[:6].min() > 10 * w[6:].max()


def _samples(emb: np.ndarray, ids: list[str], sha: list[str]) -> audit.Samples:
    keys = [f"{i}_{n:03d}" for n, i in enumerate(ids)]
    return audit.Samples(keys, ids, sha, emb.astype(np.float32), np.ones(len(ids), bool), "m")


def test_audit_identity_flags_outlier_and_duplicates_synthetic():
    rng = np.random.default_rng(1)
    a, b = _unit(rng.normal(size=32)), _unit(rng.normal(size=32))
    genuine = _unit(a + 0.5 * _unit(rng.normal(size=(4, 32))))
    emb = np.vstack([genuine, b[None], genuine[1:2]])  # four of a, one of b, a copy of the second
    ids = ["x"] * 6
    sha = ["s0", "s1", "s2", "s3", "s4", "s1"]
    res = audit.audit_identity(_samples(emb, ids, sha), np.arange(6), threshold=0.3, near=0.95)
    rows = {r["key"]: r for r in res["rows"]}
    assert rows["x_004"]["outlier"] and rows["x_004"]["exclude_from_pairing"]
    assert rows["x_005"]["duplicate_of"] == "x_001" and rows["x_005"]["near_duplicate_of"] == "x_001"
    assert rows["x_005"]["exclude_from_pairing"] and not rows["x_001"]["exclude_from_pairing"]
    assert not any(rows[f"x_{i:03d}"]["outlier"] for i in (0, 1, 2, 3))


def test_threshold_comes_from_the_registry():
    assert audit.model_threshold("mobilefacenet") == pytest.approx(0.32)
    assert audit.model_threshold("mobilefacenet", 0.5) == 0.5
    with pytest.raises(ValueError, match="same_identity_cosine"):
        audit.model_threshold("retinaface_mobile0.25")


def test_misfiled_photo_is_an_outlier(audited):
    _, summary, rows, _ = audited
    bad = rows[MISFILED]
    assert bad["outlier"] and bad["exclude_from_pairing"] and bad["centroid_cosine"] < bad["threshold"]
    assert bad["model"] == "mobilefacenet" and bad["threshold"] == pytest.approx(0.32)
    assert summary["identities_with_most_outliers"][0] == {"identity": "0000001", "outliers": 1}


def test_clean_identities_have_no_flags(audited):
    _, summary, rows, _ = audited
    flagged = {k for k, r in rows.items() if r["outlier"] or r["duplicate_of"] or r["near_duplicate_of"]
               or r["exclude_from_pairing"]}
    assert flagged == {MISFILED, DUPLICATE}
    assert all(r["centroid_cosine"] > 0.5 for k, r in rows.items() if k not in flagged)
    assert summary["outliers"] == 1 and summary["excluded_from_pairing"] == 2


def test_duplicated_file_is_caught(audited):
    _, summary, rows, _ = audited
    dup = rows[DUPLICATE]
    assert dup["duplicate_of"] == ORIGINAL and dup["near_duplicate_of"] == ORIGINAL
    assert dup["exclude_from_pairing"] and not dup["outlier"]
    assert not rows[ORIGINAL]["exclude_from_pairing"]  # one copy stays usable
    assert summary["duplicates"] == 1


def test_same_person_in_two_folders_is_a_candidate_merge(audited):
    _, summary, _, merges = audited
    assert [(m["identity_a"], m["identity_b"]) for m in merges] == [("0000003", "0000004")]
    m = merges[0]
    assert m["centroid_cosine"] >= m["threshold"] and m["pairs_total"] == 9
    assert m["pairs_above_threshold"] >= 7 and m["exact_duplicates"] == 0
    assert summary["candidate_merges"] == 1


def test_audit_writes_only_under_audit(audited, tmp_path):
    out, summary, _, _ = audited
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "audit" not in p.parts}
    again = audit.run_audit(out)
    assert again == summary  # deterministic
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "audit" not in p.parts}
    assert after == before
    assert json.loads((out / "audit" / schema.SUMMARY_FILE).read_text())["model"] == "mobilefacenet"
    assert pq.read_schema(out / "audit" / schema.IDENTITY_FILE).equals(schema.SCHEMA)


def test_exact_duplicate_across_identities_is_a_merge(audited):
    out, _, _, _ = audited
    s = audit.load_samples(out)
    s.sha256[s.keys.index("0000005_001")] = s.sha256[s.keys.index("0000001_001")]
    members = {}
    for i, ident in enumerate(s.identities):
        members.setdefault(ident, []).append(i)
    members = {k: np.array(v) for k, v in members.items()}
    per_id = {k: audit.audit_identity(s, v, 0.32, 0.95) for k, v in members.items()}
    merges = audit.find_merges(s, per_id, members, 0.32, 0.95)
    pair = [m for m in merges if (m["identity_a"], m["identity_b"]) == ("0000001", "0000005")]
    assert pair and pair[0]["exact_duplicates"] == 1 and pair[0]["centroid_cosine"] < 0.32
