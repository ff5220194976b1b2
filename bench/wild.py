"""The lite preset on every shared real photo, wild composites and mirrored copies.

    python bench/wild.py [--faces ../shared/faces] [--composites 10] [--keep DIR]

Writes the section ``wild`` of docs/benchmarks.md: main-face correctness on the composites
(tests/fixtures/wild.py) for each ``detect.select`` rule, samples lost per stage and reason on
the real photos, pairwise pose agreement (median |difference| per angle), the yaw sign flip
rate on mirrored lfw10 copies, and the emotion confusion on tests/fixtures/emotion_labels.csv.
"""
from __future__ import annotations

import argparse
import collections
import csv
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import write_section  # noqa: E402

STAGES = ("detect", "landmarks", "pose", "expression", "attributes", "identity")
POSE = {"landmarks": "PnP", "pose": "66-bin net", "expression": "3DDFA-V2"}
IMAGE_EXT = (".jpg", ".jpeg", ".png")
LABELS = ROOT / "tests" / "fixtures" / "emotion_labels.csv"


def build_tree(faces: Path, tree: Path, n_composites: int) -> dict[str, dict]:
    """Every shared photo (``real/``), lfw10 mirrors (``mirror/``), composites (``wild/``).

    Returns per relative location: kind (real / mirror / composite), its source path
    (relative to ``faces``) and the composite's target region.
    """
    from tests.fixtures import wild

    info: dict[str, dict] = {}
    for path in sorted(p for p in faces.rglob("*") if p.suffix.lower() in IMAGE_EXT):
        rel = path.relative_to(faces).as_posix()
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        ident = "real__" + "__".join(Path(rel).parent.parts)
        loc = f"{ident}/{path.stem}.png"
        (tree / ident).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tree / loc), img)
        info[loc] = {"kind": "real", "source": rel}
        if rel.startswith("lfw10/"):
            mloc = f"mirror__{path.parent.name}/{path.stem}.png"
            (tree / mloc).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tree / mloc), np.ascontiguousarray(img[:, ::-1]))
            info[mloc] = {"kind": "mirror", "source": rel}
    for c in wild.build(faces / "lfw10", n=n_composites):
        loc = f"wild__{c.kind}/{c.name}.png"
        (tree / loc).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tree / loc), np.ascontiguousarray(c.image[..., ::-1]))
        info[loc] = {"kind": "composite", "composite": c.kind, "target": c.target, "image": c.image}
    return info


def other_rules(info: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Composite hits per kind for the single-rule choices, run in this process."""
    from stages.base import Sample
    from stages.detect import Detect
    from tests.fixtures import wild

    comps = [v for v in info.values() if v["kind"] == "composite"]
    out = {}
    for rule in ("largest", "central"):
        d = Detect(model="retinaface_mobile0.25", device="cpu", select=rule)
        d.setup()
        res = d.process([Sample(str(i), "x", c["image"]) for i, c in enumerate(comps)])
        hits = collections.defaultdict(list)
        for c, r in zip(comps, res):
            hits[c["composite"]].append(r.status == "ok" and wild.hit(r.columns["box"], c["target"]))
        out[rule] = {k: f"{sum(v)}/{len(v)}" for k, v in hits.items()}
    return out


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def report(out: Path, info: dict[str, dict], rules: dict, seconds: float) -> str:
    from schemas.attributes import EMOTION_CONFIDENT_THRESHOLD, EMOTIONS
    from tests.fixtures import wild

    plan = {r["location"]: r["key"] for r in pq.read_table(out / "plan" / "plan.parquet").to_pylist()}
    rows = {s: {r["key"]: r for r in pq.read_table(out / "manifests" / s).to_pylist()} for s in STAGES}
    key_info = {plan[loc]: v for loc, v in info.items() if loc in plan}
    real = [k for k, v in key_info.items() if v["kind"] == "real"]
    parts = []

    # 1. main face on composites
    hits = collections.defaultdict(list)
    for k, v in key_info.items():
        if v["kind"] == "composite":
            r = rows["detect"][k]
            hits[v["composite"]].append(r["status"] == "ok" and wild.hit(r["box"], v["target"]))
    kinds = sorted(hits)
    body = [["auto (default)", *[f"{sum(hits[k])}/{len(hits[k])}" for k in kinds]]]
    body += [[rule, *[rules[rule].get(k, "-") for k in kinds]] for rule in rules]
    parts.append("Main face on composites (the chosen box's centre inside the intended face):\n\n"
                 + table(["detect.select", *kinds], body))

    # 2. samples lost per stage and reason (real photos)
    lost = []
    for s in STAGES:
        reasons = collections.Counter((rows[s][k]["error"] or "").split(":")[0] for k in real
                                      if rows[s][k]["status"] != "ok")
        lost.append([s, sum(reasons.values()), ", ".join(f"{r} {n}" for r, n in reasons.most_common()) or "-"])
    parts.append(f"Samples lost per stage on the {len(real)} real photos (no composites, no mirrors):\n\n"
                 + table(["stage", "not ok", "reasons"], lost))

    # 3. pose agreement on real photos
    ok = [k for k in real if all(rows[s][k]["status"] == "ok" for s in POSE)]
    names = list(POSE)
    body = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            med = [float(np.median([abs(rows[a][k][ang] - rows[b][k][ang]) for k in ok]))
                   for ang in ("yaw", "pitch", "roll")]
            body.append([f"{POSE[a]} vs {POSE[b]}", *[f"{m:.1f}" for m in med]])
    medians = [[POSE[s], *[f"{np.median([rows[s][k][ang] for k in ok]):.1f}" for ang in ("yaw", "pitch", "roll")]]
               for s in names]
    parts.append(f"Pose agreement on {len(ok)} real photos, median |difference| in degrees:\n\n"
                 + table(["pair", "yaw", "pitch", "roll"], body)
                 + "\n\nMedian angle per estimator:\n\n" + table(["estimator", "yaw", "pitch", "roll"], medians))

    # 4. mirror flips
    mirror = {v["source"]: k for k, v in key_info.items() if v["kind"] == "mirror"}
    orig = {v["source"]: k for k, v in key_info.items() if v["kind"] == "real"}
    body = []
    for s in names:
        pairs = [(rows[s][orig[src]]["yaw"], rows[s][m]["yaw"]) for src, m in mirror.items()
                 if rows[s][orig[src]]["status"] == "ok" and rows[s][m]["status"] == "ok"]
        turned = [(y, m) for y, m in pairs if abs(y) > 10]
        rate = np.mean([np.sign(y) == -np.sign(m) for y, m in turned]) if turned else float("nan")
        body.append([POSE[s], len(turned), f"{rate:.0%}"])
    parts.append("Yaw sign flip on mirrored lfw10 copies (faces with |yaw| > 10 degrees):\n\n"
                 + table(["estimator", "turned faces", "sign flips"], body))

    # 5. emotion on the labelled set
    with open(LABELS) as f:
        labelled = [(r["path"], r["label"]) for r in csv.DictReader(line for line in f if not line.startswith("#"))]
    src_key = {v["source"]: k for k, v in key_info.items() if v["kind"] == "real"}
    probs, truth = [], []
    for path, label in labelled:
        r = rows["attributes"].get(src_key.get(path, ""))
        if r is not None and r["status"] == "ok":
            probs.append(r["emotion_probs"])
            truth.append(label)
    p = np.array(probs)
    top, best = p.argmax(1), p.max(1)
    classes = sorted(set(truth))
    conf = [[t, *[int(sum(1 for i in range(len(truth)) if truth[i] == t and EMOTIONS[top[i]] == e))
                  for e in EMOTIONS]] for t in classes]
    parts.append(f"Emotion on the labelled set ({len(truth)} faces, tests/fixtures/emotion_labels.csv): "
                 "label by eye (rows) vs arg-max class (columns):\n\n" + table(["label", *EMOTIONS], conf))
    body = []
    for t in (0.5, 0.6, 0.7, 0.8, EMOTION_CONFIDENT_THRESHOLD, 0.9, 0.95):
        c = best >= t
        right = [EMOTIONS[top[i]] == truth[i] for i in np.nonzero(c)[0]]
        wrong = collections.Counter(f"{truth[i]} as {EMOTIONS[top[i]]}" for i in np.nonzero(c)[0]
                                    if EMOTIONS[top[i]] != truth[i])
        mark = " (default)" if t == EMOTION_CONFIDENT_THRESHOLD else ""
        body.append([f"{t:.2f}{mark}", f"{c.mean():.0%}", f"{np.mean(right):.0%}" if right else "-",
                     ", ".join(f"{w} {n}" for w, n in wrong.most_common()) or "-"])
    parts.append("Confident labels by threshold on the top probability:\n\n"
                 + table(["emotion_confident_threshold", "confident", "precision", "confident but wrong"], body))
    n_all = len(rows["detect"])
    parts.append(f"{n_all} images ({len(real)} real, {len(mirror)} mirrored, "
                 f"{sum(len(v) for v in hits.values())} composites) in {seconds:.0f} s with the local executor.")
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "faces")
    ap.add_argument("--composites", type=int, default=10)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp dir)")
    args = ap.parse_args()
    from pipeline.config import resolve
    from pipeline.core.runner import run

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        tree, out = work / "tree", work / "out"
        info = build_tree(args.faces, tree, args.composites)
        t0 = time.perf_counter()
        run(resolve(preset="lite", flags={"source": "folder", "input": str(tree), "out": str(out),
                                          "executor": "local"}), quiet=True)
        seconds = time.perf_counter() - t0
        body = report(out, info, other_rules(info), seconds)
    print(body)
    write_section("wild", body, f"python bench/wild.py --composites {args.composites}")


if __name__ == "__main__":
    main()
