"""Does faceweave give the same outputs on numpy 2 as on the numpy 1.26 that pip installs?

mediapipe 0.10.21 declares numpy<2. This runs, once with the installed numpy and once with a
numpy 2 from an overlay folder (``pip install --no-deps --target DIR numpy==2.4.6``) first on
the path: (1) the landmarks stage on every lfw10 photo, comparing the 468-point meshes bit for
bit; (2) the lite quickstart (``--executor local``), comparing every manifest (minus duration_s)
and every shard member. Writes the "numpy 2 compatibility" section of docs/benchmarks.md.

    python bench/numpy_compat.py --overlay /tmp/np2
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "faces" / "lfw10"

DUMP = """
import io, json, sys, numpy as np, cv2
from pathlib import Path
from stages.base import Sample
from stages.landmarks import LandmarksStage
s = LandmarksStage(); s.check(); s.setup()
res = {}
for p in sorted(Path(sys.argv[1]).glob("*/*.jpg")):
    (r,) = s.process([Sample(key=p.stem, identity="x", image=cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB))])
    res[p.stem] = np.load(io.BytesIO(r.files["lmk.npy"])).tolist() if r.status == "ok" else r.error
print(json.dumps({"numpy": np.__version__, "lmk": res}))
"""


def _env(overlay: str | None) -> dict[str, str]:
    path = [overlay] if overlay else []
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(REPO)])}


def landmarks(overlay: str | None) -> dict:
    proc = subprocess.run([sys.executable, "-c", DUMP, str(LFW)], env=_env(overlay), capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quickstart(overlay: str | None, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--source", "sample", "--out", str(out),
                    "--preset", "lite", "--executor", "local", "-q"], env=_env(overlay), check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def compare_outputs(a: Path, b: Path) -> tuple[int, int, int, int]:
    import pyarrow.parquet as pq

    same_tables = tables = 0
    for d in sorted((a / "manifests").iterdir()):
        tables += 1
        ta = pq.read_table(d).drop(["duration_s"]).sort_by("key")
        same_tables += ta.equals(pq.read_table(b / "manifests" / d.name).drop(["duration_s"]).sort_by("key"))
    members = {}
    for root in (a, b):
        with tarfile.open(root / "shards" / "00000.tar") as tar:
            members[root] = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    same = sum(members[a][k] == members[b].get(k) for k in members[a])
    return same_tables, tables, same, len(members[a])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overlay", required=True, help="folder holding a numpy 2 (pip install --target)")
    args = ap.parse_args()
    one, two = landmarks(None), landmarks(args.overlay)
    keys = sorted(one["lmk"])
    identical = sum(one["lmk"][k] == two["lmk"][k] for k in keys)
    ok = sum(isinstance(v, list) for v in one["lmk"].values())
    with tempfile.TemporaryDirectory() as tmp:
        s1 = quickstart(None, Path(tmp) / "np1")
        s2 = quickstart(args.overlay, Path(tmp) / "np2")
        same_tables, tables, same_members, members = compare_outputs(Path(tmp) / "np1", Path(tmp) / "np2")
    body = (f"mediapipe 0.10.21 (declares numpy<2), numpy {one['numpy']} (installed) vs {two['numpy']} "
            f"(overlay).\n\n| check | numpy {one['numpy']} vs {two['numpy']} |\n|---|---|\n"
            f"| landmarks stage, {len(keys)} lfw10 photos ({ok} with a face) | {identical}/{len(keys)} "
            f"meshes (or errors) bit-identical |\n"
            f"| lite quickstart (9 photos, local executor): manifests minus duration_s | "
            f"{same_tables}/{tables} tables equal |\n"
            f"| lite quickstart: shard members | {same_members}/{members} byte-identical |\n"
            f"| lite quickstart wall time (2 shared, busy cores: not a speed comparison) | {s1:.1f} s vs {s2:.1f} s |\n\n"
            "Also run by hand: `python -m pytest tests/test_landmarks.py` passes (10 tests) with the numpy "
            "2.4.6 overlay, and the README's quickstart on the Ray executor gives the same outputs.")
    sys.path.insert(0, str(REPO))
    from bench.report import write_section

    write_section("numpy 2 compatibility", body, "python bench/numpy_compat.py --overlay DIR")
    print(body)


if __name__ == "__main__":
    main()
