"""The layout of an OUT folder: every path a run writes and a reader opens, named once.

    run.json, config.yaml           the last run: config, summary, provenance; its config as YAML
    plan/plan.parquet, plan.json    the plan: one row per key (location, size, mtime, sha256, shard)
    plan/refresh/<shard>.json       keys a --refresh re-plans in that shard
    manifests/<stage>/<shard>.parquet, payloads/<stage>/<shard>.tar,
    done/<stage>/<shard>.json, stats/<stage>/<shard>.json
                                    one stage's outputs for one shard (``manifest.ShardOutputs``)
    journal/<stage>/<shard>.json    the crash journal of a shard being processed
    shards/<shard>.tar, shards/index.json, shards/wids-index.json
                                    the WebDataset shards and their indexes
    audit/                          ``pipeline audit``'s tables (leaks.parquet, summary.json, ...)
    report/                         ``pipeline inspect``'s HTML report
    README.md                       ``pipeline card``'s dataset card
    .lock, .progress                the running run's lock and live progress

Light on purpose (pathlib only): the CLI, the run-time core and the readers all import it.
"""
from __future__ import annotations

from pathlib import Path

PACK = "pack"
"""The pack step's name under done/ (its markers hold each shard's index entry)."""
CARD = "README.md"


def _folder(out: str | Path, name: str, stage: str | None) -> Path:
    """A per-stage folder (``name/``), or one stage's part of it (``name/<stage>/``)."""
    root = Path(out) / name
    return root / stage if stage else root


def run_json(out: str | Path) -> Path:
    return Path(out) / "run.json"


def config_yaml(out: str | Path) -> Path:
    return Path(out) / "config.yaml"


def plan_table(out: str | Path) -> Path:
    return Path(out) / "plan" / "plan.parquet"


def plan_info(out: str | Path) -> Path:
    return Path(out) / "plan" / "plan.json"


def refresh_note(out: str | Path, shard: str) -> Path:
    return Path(out) / "plan" / "refresh" / f"{shard}.json"


def manifests(out: str | Path, stage: str | None = None) -> Path:
    """manifests/, or one stage's folder of per-shard Parquet files (a dataset to pyarrow and duckdb)."""
    return _folder(out, "manifests", stage)


def payloads(out: str | Path, stage: str | None = None) -> Path:
    return _folder(out, "payloads", stage)


def done(out: str | Path, stage: str | None = None) -> Path:
    return _folder(out, "done", stage)


def stats(out: str | Path, stage: str | None = None) -> Path:
    return _folder(out, "stats", stage)


def journal(out: str | Path, stage: str | None = None) -> Path:
    return _folder(out, "journal", stage)


def shards(out: str | Path) -> Path:
    return Path(out) / "shards"


def shard_tar(out: str | Path, shard: str) -> Path:
    return shards(out) / f"{shard}.tar"


def shard_tars(out: str | Path) -> list[Path]:
    """The finished shard tars, in order (a dot-prefixed name is one still being written)."""
    return sorted(p for p in shards(out).glob("*.tar") if not p.name.startswith("."))


def shard_index(out: str | Path) -> Path:
    return shards(out) / "index.json"


def wids_index(out: str | Path) -> Path:
    return shards(out) / "wids-index.json"


def pack_marker(out: str | Path, shard: str) -> Path:
    return done(out, PACK) / f"{shard}.json"


def audit(out: str | Path) -> Path:
    from schemas.audit import AUDIT_DIR  # named there: training reads the leak table too

    return Path(out) / AUDIT_DIR


def card(out: str | Path) -> Path:
    return Path(out) / CARD


def report(out: str | Path) -> Path:
    return Path(out) / "report"


def lock(out: str | Path) -> Path:
    return Path(out) / ".lock"


def progress(out: str | Path) -> Path:
    return Path(out) / ".progress"
