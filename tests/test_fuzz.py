"""Fuzzed inputs: thousands of seeded mutations of real JPEG/PNG/WebP files, each exactly one row."""
from __future__ import annotations

import io
import random
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.runner import run
from tests.conftest import lfw_people
from tests.test_runner import cfg_for

N_FILES = 2000
SEED = 20261123


def base_files() -> list[tuple[str, bytes]]:
    """Real photos as JPEG (original bytes), PNG and WebP."""
    out = []
    for _, photos in lfw_people(3, 2):
        for photo in photos:
            data = photo.read_bytes()
            out.append(("jpg", data))
            image = Image.open(io.BytesIO(data)).convert("RGB").resize((96, 96))
            for fmt, ext in (("PNG", "png"), ("WEBP", "webp")):
                buf = io.BytesIO()
                image.save(buf, fmt)
                out.append((ext, buf.getvalue()))
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.choice(("flip", "truncate", "header", "splice", "zero"))
    if kind == "flip":
        for _ in range(rng.randint(1, 24)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[rng.randrange(1, len(data)):]
    elif kind == "header":  # dimensions, markers and chunk lengths live in the first bytes
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
    elif kind == "splice":
        a = rng.randrange(len(data))
        data[a:a + rng.randint(1, 512)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    else:
        a = rng.randrange(len(data))
        data[a:a + rng.randint(16, 4096)] = bytes(rng.randint(16, 4096))
    return bytes(data)


@pytest.mark.fault("fuzzed image files", injection="2000 seeded mutations (bit flips, truncation, header edits, splices, wrong extensions) of real JPEG/PNG/WebP", behaviour="run finishes; each input is exactly one row per stage with a reason when bad", compared="keys per manifest = inputs; status/error consistency")
@pytest.mark.slow
def test_fuzzed_inputs_each_become_exactly_one_row(tmp_path):
    rng = random.Random(SEED)
    bases = base_files()
    tree = tmp_path / "tree"
    for i in range(N_FILES):
        ext, data = rng.choice(bases)
        if rng.random() < 0.1:  # wrong extension
            ext = rng.choice(("jpg", "png", "webp"))
        folder = tree / f"{i % 50:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.{ext}").write_bytes(mutate(rng, data))
    out = tmp_path / "out"
    t0 = time.time()
    summary = run(cfg_for(tree, out, shard_size=250), quiet=True)
    assert time.time() - t0 < 600
    for stage in ("source", "center", "colour"):
        keys = pq.read_table(out / "manifests" / stage).column("key").to_pylist()
        assert len(keys) == len(set(keys)) == N_FILES, stage
    rows = pq.read_table(out / "manifests" / "source").to_pylist()
    for row in rows:
        assert (row["status"] == "ok") == (row["error"] == "")
    reasons = summary["stages"]["source"]["reasons"]
    print(f"{N_FILES} fuzzed files: {summary['stages']['source']['status']}, reasons {reasons}")
    assert set(reasons) <= {"truncated", "not_an_image", "decompression_bomb", "too_small", "empty_file",
                            "unsupported_mode", "decode_error"}, reasons
