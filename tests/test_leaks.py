"""Leakage between output folders (``pipeline audit OUT --against OTHER``) on real lite runs.

Three output folders, built once per module from lfw10 with the lite preset (MobileFaceNet):
TRAIN holds four people, EVAL two of them (other photos, other identity labels) plus a third
person whose folder also holds a copy of one TRAIN photo, DISJOINT two people TRAIN lacks.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.readers import audit, leaks
from pipeline.cli import app
from schemas import leaks as schema
from tests.conftest import LFW

# output folder -> identity folder -> (lfw person, photo numbers)
TREES: dict[str, dict[str, list[tuple[str, int]]]] = {
    "train": {"0000001": [("Ariel_Sharon", 1), ("Ariel_Sharon", 2)],
              "0000002": [("Arnold_Schwarzenegger", 1), ("Arnold_Schwarzenegger", 2)],
              "0000003": [("Colin_Powell", 1), ("Colin_Powell", 2)],
              "0000004": [("Donald_Rumsfeld", 1), ("Donald_Rumsfeld", 2)]},
    "eval": {"0000101": [("Colin_Powell", 4), ("Colin_Powell", 5)],
             "0000102": [("Donald_Rumsfeld", 4), ("Donald_Rumsfeld", 5)],
             "0000103": [("George_W_Bush", 1), ("George_W_Bush", 2), ("George_W_Bush", 3), ("Ariel_Sharon", 1)]},
    "disjoint": {"0000201": [("Hugo_Chavez", 1), ("Hugo_Chavez", 2)],
                 "0000202": [("Jacques_Chirac", 1), ("Jacques_Chirac", 2)]},
}
SHARED = {("0000003", "0000101"), ("0000004", "0000102")}
COPIED = ("0000001_001", "0000103_004")  # Ariel_Sharon_0001 in TRAIN and in EVAL


def build(base: Path, name: str) -> Path:
    out = base / name / "out"
    for ident, photos in TREES[name].items():
        folder = base / name / "tree" / ident
        folder.mkdir(parents=True)
        for j, (person, i) in enumerate(photos):
            shutil.copyfile(LFW / person / f"{person}_{i:04d}.jpg", folder / f"{j + 1:03d}.jpg")
    result = CliRunner().invoke(app, ["run", "--source", "casia-webface", "--input", str(base / name / "tree"),
                                      "--out", str(out), "--preset", "lite", "--executor", "local", "-q"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    if not LFW.is_dir():
        pytest.skip(f"real faces missing: {LFW}")
    base = tmp_path_factory.mktemp("leaks")
    return {name: build(base, name) for name in TREES}


@pytest.fixture(scope="module")
def audited(folders):
    result = CliRunner().invoke(app, ["audit", str(folders["train"]), "--against", str(folders["eval"]),
                                      "--against", str(folders["disjoint"])])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(leaks.leaks_path(folders["train"])).to_pylist()
    return rows, result.output


def test_exactly_the_shared_identities_and_the_copied_photo(folders, audited):
    rows, output = audited
    against_eval = [r for r in rows if r["against"] == str(folders["eval"].resolve())]
    ident = {(r["identity"], r["other_identity"]) for r in against_eval if r["level"] == "identity"}
    assert ident == SHARED
    for r in against_eval:
        if r["level"] == "identity":
            assert r["cosine"] >= r["threshold"] == pytest.approx(0.32) and r["model"] == "mobilefacenet"
            assert r["pairs_total"] == 4 and 0 < r["pairs_above_threshold"] <= 4
            assert r["pair_fraction"] == pytest.approx(r["pairs_above_threshold"] / 4)
    photos = [(r["kind"], r["key"], r["other_key"]) for r in against_eval if r["level"] == "sample"]
    assert photos == [("exact", *COPIED)]
    assert "2 shared identities (2 pairs), 1 exact and 0 near-duplicate photos" in output
    summary = json.loads((folders["train"] / "audit" / "summary.json").read_text())["leaks"]
    assert summary["excluded_samples"] == 5  # Colin and Donald (2 + 2), the copied Ariel photo


def test_disjoint_folders_leak_nothing(folders, audited):
    rows, output = audited
    assert not [r for r in rows if r["against"] == str(folders["disjoint"].resolve())]
    assert "0 shared identities (0 pairs), 0 exact and 0 near-duplicate photos" in output
    summary = leaks.run_leaks(folders["disjoint"], [folders["train"]])  # the other direction
    assert summary["identities"] == summary["exact_duplicates"] == summary["near_duplicates"] == 0
    assert pq.read_table(leaks.leaks_path(folders["disjoint"])).num_rows == 0


def test_leaks_view_and_export_exclusion(folders, audited, tmp_path):
    from pipeline.readers.export import export
    from pipeline.readers.sql import query

    out = folders["train"]
    got = query(out, "SELECT kind, count(*) n FROM leaks GROUP BY 1 ORDER BY 1").to_pylist()
    assert got == [{"kind": "exact", "n": 1}, {"kind": "identity", "n": 2}]
    summary = export(out, "pairs", tmp_path / "pairs", exclude_leaks=True)
    assert summary["selected"] == 3  # 8 samples - Colin (2) - Donald (2) - the copied photo
    assert summary["exclude_leaks"] is True and summary["where"] == ""
    lines = [json.loads(x) for x in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    keys = {k for line in lines for k in (line.get("target_key"), line.get("reference_key")) if k}
    assert not keys & {COPIED[0], "0000003_001", "0000004_001"}
    only = export(out, "pairs", tmp_path / "pairs2", where="identity = '0000003'", exclude_leaks=True)
    assert only["selected"] == 0
    with pytest.raises(FileNotFoundError, match="--against"):
        export(folders["eval"], "pairs", tmp_path / "pairs3", exclude_leaks=True)


def test_training_pairs_exclude_leaks(folders, audited, tmp_path):
    from training.pairs import PairConfig, PairIndex, build_index, is_current

    shards = folders["train"] / "shards"
    stats = build_index(shards, PairConfig(exclude_leaks=True))
    index = PairIndex(shards)
    assert stats.leak_excluded_samples == 5 and stats.samples == 8
    paired = {str(k) for k in index.keys if index.candidates(str(k))}
    assert paired == {"0000002_001", "0000002_002"}  # Ariel keeps one photo: no reference left
    assert is_current(shards, PairConfig(exclude_leaks=True)) and not is_current(shards, PairConfig())
    build_index(shards, PairConfig())
    assert PairIndex(shards).candidates(COPIED[0]) == ["0000001_002"]


def _samples(emb: np.ndarray, ids: list[str], model: str = "m", folder: str = "a") -> audit.Samples:
    keys = [f"{i}_{n:03d}" for n, i in enumerate(ids)]
    return audit.Samples(keys, ids, [f"{folder}-{k}" for k in keys], emb.astype(np.float32),
                         np.ones(len(ids), bool), model)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_blocks_do_not_change_the_result_and_centroids_match_the_audit():
    rng = np.random.default_rng(3)
    people = _unit(rng.normal(size=(12, 32)))
    ia, ib = rng.integers(0, 8, 60), rng.integers(4, 12, 50)
    a = _samples(_unit(people[ia] + 0.15 * rng.normal(size=(60, 32))), [f"p{i}" for i in ia])
    b = _samples(_unit(people[ib] + 0.15 * rng.normal(size=(50, 32))), [f"p{i}" for i in ib], folder="b")
    b.embeddings[7] = a.embeddings[5]  # one near-duplicate photo across the folders
    whole = leaks.find_leaks(a, b, "B", 0.5, 0.95, block=1 << 16)
    blocked = leaks.find_leaks(a, b, "B", 0.5, 0.95, block=7)
    assert [{**r, "cosine": None} for r in blocked] == [{**r, "cosine": None} for r in whole]
    assert [r["cosine"] for r in blocked] == pytest.approx([r["cosine"] for r in whole], abs=1e-5)
    assert {(r["identity"], r["other_identity"]) for r in whole if r["level"] == "identity"} == \
        {(f"p{i}", f"p{i}") for i in set(ia) & set(ib)}
    assert [(r["kind"], r["key"], r["other_key"]) for r in whole if r["level"] == "sample"] == \
        [("near", a.keys[5], b.keys[7])]
    names, cents, counts, _ = leaks.centroids(a)
    for name, c, n in zip(names, cents, counts):
        rows = [i for i, x in enumerate(a.identities) if x == name]
        expected, _ = audit.robust_centroid(a.embeddings[rows])
        assert n == len(rows) and float(c @ expected) > 0.9999


def test_different_embedding_models_are_refused():
    x = _unit(np.random.default_rng(0).normal(size=(2, 8)))
    with pytest.raises(ValueError, match="one embedding model"):
        leaks.find_leaks(_samples(x, ["a", "b"], "arcface_irse50"), _samples(x, ["a", "b"], "mobilefacenet"),
                         "EVAL", 0.3, 0.95)


def test_exclude_condition_survives_null_keys(folders, audited):
    from pipeline.readers.sql import query

    kept = query(folders["train"], f"SELECT key FROM samples WHERE {leaks.exclude_condition()} ORDER BY key")
    assert kept.column("key").to_pylist() == ["0000001_002", "0000002_001", "0000002_002"]
    assert schema.SCHEMA.names[:3] == ["level", "kind", "against"]


def test_plain_audit_keeps_earlier_leak_results(folders, audited):
    before = pq.read_table(leaks.leaks_path(folders["train"]))
    summary = audit.run_audit(folders["train"])  # no --against: the leak results stay
    assert summary["leaks"]["excluded_samples"] == 5
    assert pq.read_table(leaks.leaks_path(folders["train"])).equals(before)
