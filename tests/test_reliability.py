"""Fault matrix, part 2: corrupted outputs and a full disk (in-process executor, plugin stages)."""
from __future__ import annotations

import json
import subprocess

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.runner import DiskFullError, run
from pipeline.readers.verify import verify
from tests.test_kill import assert_same_outputs
from tests.test_runner import cfg_for, plugin_stages  # noqa: F401  (registers the plugin stages)


@pytest.fixture(scope="module")
def reference(casia_tree, tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "out"
    run(cfg_for(casia_tree, ref), quiet=True)
    return ref


def mtimes(out):
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".parquet", ".tar")}


@pytest.mark.fault("truncated shard, corrupted manifest, broken done marker", injection="cut a shard tar to 1000 bytes, flip one byte of a manifest, write garbage into a marker", behaviour="pipeline verify lists exactly those three and exits 1; the next run redoes only those stage-shards and their packs", compared="verify output; mtimes of untouched files; final outputs vs an uninterrupted run")
def test_verify_names_exactly_the_bad_files_and_the_rerun_redoes_only_them(casia_tree, reference, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(casia_tree, out), quiet=True)
    n_shards = len(list((out / "shards").glob("*.tar")))
    assert verify(out, dry_run=True) == ([], 4 * n_shards)  # source, center, colour, pack
    shard = out / "shards" / "00001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    manifest = out / "manifests" / "center" / "00002.parquet"
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    manifest.write_bytes(bytes(data))
    (out / "done" / "colour" / "00000.json").write_text("{not json")
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 1
    bad = sorted({line.split()[1].rstrip(":") for line in result.output.splitlines() if line.startswith("BAD")})
    assert bad == ["done/colour/00000.json", "manifests/center/00002.parquet", "shards/00001.tar"]
    before = mtimes(out)
    run(cfg_for(casia_tree, out), quiet=True)
    redone = {str(p.relative_to(out)) for p, t in mtimes(out).items() if before.get(p) != t}
    # the bad stage-shards and the packs of their shards; the bad shard held its stages' packed
    # files (compaction), so every stage of shard 00001 is redone; shard 00003 is untouched
    assert {"shards/00001.tar", "manifests/center/00002.parquet", "manifests/colour/00000.parquet",
            "shards/00000.tar", "shards/00002.tar", "manifests/center/00001.parquet",
            "manifests/colour/00001.parquet"} <= redone
    assert not {p for p in redone if "00003" in p}
    assert all(p.startswith(("manifests/", "payloads/", "shards/")) for p in redone)
    assert verify(out, dry_run=True)[0] == []
    assert_same_outputs(out, reference)


@pytest.mark.fault("truncated payload without verify", injection="cut a payload tar to 512 bytes", behaviour="the size recorded in the done marker fails, the stage-shard is redone", compared="outputs vs an uninterrupted run")
def test_truncation_is_caught_by_the_next_run_even_without_verify(casia_tree, reference, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(casia_tree, out), quiet=True)
    payloads = sorted((out / "payloads").rglob("*.tar"))  # after compaction: what the shards lack
    payload = payloads[0] if payloads else out / "shards" / "00001.tar"
    payload.write_bytes(payload.read_bytes()[:512])
    run(cfg_for(casia_tree, out), quiet=True)
    assert_same_outputs(out, reference)


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.fault("disk full while writing", injection="OUT on a 400 KiB tmpfs (injected ENOSPC where mounting is not permitted)", behaviour="DiskFullError naming the folder; nothing half-written marked done; after growing the tmpfs the rerun completes", compared="verify finds no bad file; outputs vs an uninterrupted run")
def test_disk_full_fails_clearly_and_the_rerun_completes(casia_tree, reference, tmp_path, monkeypatch):
    mnt = tmp_path / "small"
    if _mount_tmpfs(mnt, "400k"):
        try:
            with pytest.raises(DiskFullError, match="disk full"):
                run(cfg_for(casia_tree, mnt / "out"), quiet=True)
            assert verify(mnt / "out", dry_run=True)[0] == []  # nothing half-written was marked done
            subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
            run(cfg_for(casia_tree, mnt / "out"), quiet=True)
            assert_same_outputs(mnt / "out", reference)
        finally:
            subprocess.run(["umount", "-l", str(mnt)])
        return
    # No permission to mount: inject ENOSPC into the tar writer after a few members.
    import errno

    from pipeline.core import manifest

    calls = {"n": 0}
    original = manifest.TarWriter.add

    def full_disk(self, name, data):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, name, data)

    monkeypatch.setattr(manifest.TarWriter, "add", full_disk)
    out = tmp_path / "out"
    with pytest.raises(DiskFullError):
        run(cfg_for(casia_tree, out), quiet=True)
    assert verify(out, dry_run=True)[0] == []
    monkeypatch.setattr(manifest.TarWriter, "add", original)
    run(cfg_for(casia_tree, out), quiet=True)
    assert_same_outputs(out, reference)


@pytest.mark.fault("transient per-sample failure, then --retry-errors", injection="a stage raises for one key (env switch), later healed", behaviour="plain rerun recomputes nothing; --retry-errors center recomputes only that row and its dependants", compared="ok rows identical incl. timings; counts exact; outputs vs an uninterrupted run")
def test_retry_errors_recomputes_only_error_rows(casia_tree, reference, tmp_path, monkeypatch):
    """A transient failure (FACEWEAVE_TEST_FAIL_KEY raises for one key) heals with --retry-errors."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    victim = "0000003_001"
    monkeypatch.setenv("FACEWEAVE_TEST_FAIL_KEY", victim)
    run(cfg_for(casia_tree, out), quiet=True)
    rows = {r["key"]: r for r in pq.read_table(out / "manifests" / "center").to_pylist()}
    assert rows[victim]["status"] == "error"
    ok_before = {k: r for k, r in rows.items() if r["status"] == "ok"}
    monkeypatch.delenv("FACEWEAVE_TEST_FAIL_KEY")
    run(cfg_for(casia_tree, out), quiet=True)  # a plain rerun keeps the error row: nothing recomputed
    assert {r["key"]: r for r in pq.read_table(out / "manifests" / "center").to_pylist()}[victim]["status"] == "error"
    run(cfg_for(casia_tree, out, retry_errors="center"), quiet=True)
    after = {r["key"]: r for r in pq.read_table(out / "manifests" / "center").to_pylist()}
    assert after[victim]["status"] == "ok"
    assert all(after[k] == r for k, r in ok_before.items())  # ok rows untouched, timings included
    colour = {r["key"]: r for r in pq.read_table(out / "manifests" / "colour").to_pylist()}
    assert colour[victim]["status"] == "ok"  # the dependant row recovered too
    src_errors = sum(r["status"] == "error" for r in pq.read_table(out / "manifests" / "source").to_pylist())
    stats = json.loads((out / "run.json").read_text())["summary"]["stages"]
    assert stats["center"]["status"].get("error", 0) == 0
    assert stats["center"]["status"]["ok"] + stats["center"]["status"].get("skipped", 0) == len(after)
    assert stats["colour"]["status"]["skipped"] == src_errors
    assert_same_outputs(out, reference)


@pytest.mark.fault("weights directory must stay read-only", injection="runs with --weights-dir (missing weights, and random-weight stages)", behaviour="the directory is never written", compared="names, sizes and mtimes before and after")
def test_a_run_never_writes_the_weights_directory(casia_tree, tmp_path):
    from pipeline.config import resolve
    from pipeline.core.runner import MissingWeightsError

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "unrelated.pth").write_bytes(b"not a checkpoint")
    snapshot = lambda: {(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in weights.rglob("*")}  # noqa: E731
    before = snapshot()
    with pytest.raises(MissingWeightsError):
        run(resolve(flags={"source": "casia-webface", "input": str(casia_tree), "out": str(tmp_path / "o1"),
                           "weights_dir": str(weights), "executor": "local"}), quiet=True)
    run(resolve(flags={"source": "casia-webface", "input": str(casia_tree), "out": str(tmp_path / "o2"),
                       "weights_dir": str(weights), "executor": "local", "stages": "identity"},
                sets=["detect.model=retinaface_mobile0.25", "identity.weights=random"]), quiet=True)
    assert snapshot() == before and weights.stat().st_mtime_ns == weights.stat().st_mtime_ns
