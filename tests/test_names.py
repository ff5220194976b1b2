"""Hostile file names end to end: keys stay dot-free and unique, nothing escapes OUT."""
from __future__ import annotations

import os
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest

from pipeline.core.runner import run
from tests.conftest import lfw_people
from tests.test_runner import cfg_for


@pytest.mark.fault("hostile file names", injection="unicode, spaces, dots, 200-char names, leading dashes, hidden files, case/extension twins, symlink loop, dangling and escaping symlinks", behaviour="keys dot-free, unique, <=120 chars; a collision is an error row; hidden folders skipped; a dot-named image is a row; an escaping link is the error row link_escapes_input, never read", compared="plan keys, manifests, tar member names, every output path inside OUT")
def test_hostile_names(tmp_path):
    photo = lfw_people(1, 1)[0][1][0]
    tree = tmp_path / "tree"
    names = {
        "Zoë Ünïcode/été photo.jpg", "spaces in id/a b c.jpg", "dots.in.id/x.y.z.jpg", "-dash/-leading.jpg",
        "case/Photo.jpg", "case/photo.JPG", "ext/same.jpg", "ext/same.png", f"long/{'n' * 200}.jpg",
        "../escape.jpg", ".hidden/secret.jpg", "vis/.hidden.jpg", "日本/写真.jpg",
    }
    for name in names:
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, path)
    (tree / "loop").mkdir()
    os.symlink(tree / "loop", tree / "loop" / "again")  # a symlink loop
    os.symlink(tree / "nowhere.jpg", tree / "case" / "dangling.jpg")  # unreadable
    os.symlink(tmp_path / "escape.jpg", tree / "vis" / "outside.jpg")  # points outside the input
    out = tmp_path / "out"
    run(cfg_for(tree, out), quiet=True)
    plan = pq.read_table(out / "plan" / "plan.parquet").to_pylist()
    keys = [r["key"] for r in plan]
    assert len(keys) == len(set(keys)) and len({k.lower() for k in keys}) == len(keys)
    assert all("." not in k and "/" not in k and not k.startswith("-") and len(k) <= 120 for k in keys)
    locations = {r["location"] for r in plan}
    assert not any(loc.startswith(".hidden") for loc in locations) and "vis/.hidden.jpg" in locations
    assert not any(loc.startswith("..") for loc in locations)
    assert [r["error"] for r in plan if r["location"] == "vis/outside.jpg"] == ["link_escapes_input"]
    collisions = [r for r in plan if r["error"].startswith("key_collision")]
    # Photo.jpg vs photo.JPG and same.jpg vs same.png map to one key each: the later one is an error row
    assert sorted(r["location"] for r in collisions) == ["case/photo.JPG", "ext/same.png"]
    src = {r["key"]: r for r in pq.read_table(out / "manifests" / "source").to_pylist()}
    for r in collisions:
        assert src[r["key"]]["status"] == "error" and src[r["key"]]["error"].startswith("key_collision")
    for stage in ("center", "colour"):
        assert sorted(pq.read_table(out / "manifests" / stage).column("key").to_pylist()) == sorted(keys)
    for shard in (out / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                assert member.isfile() and "/" not in member.name and not member.name.startswith(".")
    outside = {p.resolve() for p in out.rglob("*")}
    assert all(str(p).startswith(str(out.resolve())) for p in outside)
