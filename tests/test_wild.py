"""Right on wild photos: the main face, background faces, pose agreement and emotion confidence.

Real photos from shared/faces through the lite preset's bundled models; composites
(tests/fixtures/wild.py) are built from lfw10. Figures over all shared photos: bench/wild.py.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import resolve
from pipeline.core.runner import run
from schemas import attributes as aschema
from stages import face_choice, geometry
from stages.attributes import Attributes, emotion_columns
from stages.base import OK, Result, Sample
from stages.detect import Detect
from stages.landmarks import LandmarksStage
from tests.conftest import FACES, LFW
from tests.fixtures import wild

needs_faces = pytest.mark.skipif(not LFW.is_dir(), reason=f"real faces missing: {LFW}")
LABELS = Path(__file__).parent / "fixtures" / "emotion_labels.csv"
POSE_PHOTOS = ("0001", "0002", "0003")  # 30 lfw10 photos, 18 with |yaw| > 10 degrees


def read_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])


@pytest.fixture(scope="module")
def detector():
    d = Detect(model="retinaface_mobile0.25", device="cpu")
    d.setup()
    return d


# --- 1. the main face ------------------------------------------------------------------------

@needs_faces
@pytest.mark.parametrize("kind", wild.KINDS)
def test_composites_choose_the_intended_face(detector, kind):
    comps = [c for c in wild.build(LFW, n=3) if c.kind == kind]
    results = detector.process([Sample(c.name, c.name, c.image) for c in comps])
    for c, r in zip(comps, results):
        assert r.status == OK, (c.name, r.error)
        assert wild.hit(r.columns["box"], c.target), (c.name, r.columns["choice_why"])
        assert r.columns["choice_why"] and 0.0 < r.columns["choice_value"] <= 1.0


@needs_faces
def test_texture_composite_beats_largest_and_records_the_runner_up(detector):
    comp = next(c for c in wild.build(LFW, n=2) if c.name == "texture_1")
    largest = Detect(model="retinaface_mobile0.25", device="cpu", select="largest")
    largest._net, largest._device = detector._net, detector._device
    naive = largest.process([Sample("t", "t", comp.image)])[0]
    assert not wild.hit(naive.columns["box"], comp.target)  # the texture is larger
    cols = detector.process([Sample("t", "t", comp.image)])[0].columns
    assert wild.hit(cols["box"], comp.target)
    assert cols["runner_up_box"] == pytest.approx(naive.columns["box"])
    assert cols["runner_up_value"] < cols["choice_value"] and "runner-up lost on" in cols["choice_why"]


def test_shape_term_rejects_broken_points_and_keeps_faces():
    box = np.array([72, 66, 160, 186.0])
    face = np.array([105, 111, 145, 114, 132, 133, 110, 158, 139, 161.0])  # RetinaFace on LFW
    assert face_choice.shape_term(box, face) == pytest.approx(1.0)
    # the upside-down texture: eyes 11 px apart in a 147 px box, mouth above the eyes
    fake_box = np.array([62, 297, 209, 468.0])
    fake = np.array([108, 383, 116, 391, 97, 385, 103, 369, 124, 376.0])
    assert face_choice.shape_term(fake_box, fake) == 0.0
    with pytest.raises(ValueError):
        face_choice.choose(np.zeros((0, 15), np.float32), 100, 100)


# --- 2. background faces on the aligned crop ------------------------------------------------

def _mesh(scale: float, centre: tuple[float, float]) -> np.ndarray:
    v = geometry.load_face_model().vertices
    xy = (v[:, :2] - v[:, :2].mean(0)) * scale + centre
    return np.concatenate([xy, v[:, 2:] * scale], 1).astype(np.float32)


def test_choose_mesh_matches_detect_points_and_flags_only_real_ambiguity():
    main, bystander = _mesh(14, (256, 290)), _mesh(6, (440, 120))
    points5 = face_choice.mesh_five(main) + 3.0  # detect's points, a few px off the mesh's
    pick = face_choice.choose_mesh([bystander, main], 512, 512, points5)
    assert pick.index == 1 and not pick.ambiguous and pick.distance < 5
    twin = _mesh(13, (280, 300))  # a second face of similar size where the face is expected
    assert face_choice.choose_mesh([main, twin], 512, 512, points5).ambiguous
    # without detect: the larger central face, and two similar faces side by side are ambiguous
    assert face_choice.choose_mesh([bystander, main], 512, 512).index == 1
    left, right = _mesh(10, (150, 256)), _mesh(10, (362, 256))
    assert face_choice.choose_mesh([left, right], 512, 512).ambiguous


@needs_faces
def test_background_faces_no_longer_cost_the_sample(detector):
    stage = LandmarksStage()
    stage.setup()
    for name in ("Ariel_Sharon_0004", "Ariel_Sharon_0009"):  # people behind the main face
        det = detector.process([Sample(name, "a", read_rgb(LFW / "Ariel_Sharon" / f"{name}.jpg"))])[0]
        sample = Sample(name, "a", det.frame, frame="aligned", upstream={"detect": det})
        res = stage.process([sample])[0]
        assert res.status == OK, (name, res.error)
        assert res.columns["n_faces"] == 2
        centre = np.mean(np.asarray(det.columns["points5_crop"]).reshape(5, 2), 0)
        lo = np.array([res.columns["bbox_x0"], res.columns["bbox_y0"]])
        hi = np.array([res.columns["bbox_x1"], res.columns["bbox_y1"]])
        assert np.all(lo < centre) and np.all(centre < hi)  # the kept mesh is detect's face
    stage.close()


# --- 3. pose agreement and mirror flips on real photos --------------------------------------

@pytest.fixture(scope="module")
def pose_rows(tmp_path_factory):
    if not LFW.is_dir():
        pytest.skip(f"real faces missing: {LFW}")
    tree = tmp_path_factory.mktemp("wild") / "tree"
    for person in sorted(p for p in LFW.iterdir() if p.is_dir()):
        for photo in sorted(person.glob("*.jpg")):
            if photo.stem.endswith(POSE_PHOTOS):
                for suffix, img in (("", read_rgb(photo)), ("_m", read_rgb(photo)[:, ::-1])):
                    out = tree / person.name / f"{photo.stem}{suffix}.png"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(out), np.ascontiguousarray(img[..., ::-1]))
    out = tree.parent / "out"
    flags = {"source": "folder", "input": str(tree), "out": str(out), "executor": "local",
             "stages": "detect,landmarks,pose,expression"}
    run(resolve(preset="lite", flags=flags), quiet=True)
    return {s: {r["key"]: r for r in pq.read_table(out / "manifests" / s).to_pylist()}
            for s in ("landmarks", "pose", "expression")}


ESTIMATORS = ("landmarks", "pose", "expression")  # PnP, 66-bin net, 3DDFA-V2


@pytest.mark.slow  # the module fixture runs 60 photos through four stages (~45 s on 2 busy cores)
@needs_faces
def test_pose_estimators_agree_within_3_degrees(pose_rows):
    keys = [k for k in pose_rows["landmarks"] if all(pose_rows[s][k]["status"] == OK for s in ESTIMATORS)]
    assert len(keys) >= 57  # 60 images; nothing lost
    for angle in ("yaw", "pitch", "roll"):
        values = {s: np.array([pose_rows[s][k][angle] for k in keys]) for s in ESTIMATORS}
        for i, a in enumerate(ESTIMATORS):
            for b in ESTIMATORS[i + 1:]:
                med = float(np.median(np.abs(values[a] - values[b])))
                print(f"{angle} {a} vs {b}: median |diff| {med:.1f} deg")
                assert med <= 3.0, (angle, a, b, med)


@pytest.mark.slow
@needs_faces
def test_yaw_flips_sign_on_mirrored_copies(pose_rows):
    for s in ESTIMATORS:
        rows = pose_rows[s]
        pairs = [(rows[k]["yaw"], rows[k + "_m"]["yaw"]) for k in rows
                 if not k.endswith("_m") and k + "_m" in rows
                 and rows[k]["status"] == OK and rows[k + "_m"]["status"] == OK]
        turned = [(y, m) for y, m in pairs if abs(y) > 10]
        rate = np.mean([np.sign(y) == -np.sign(m) for y, m in turned])
        print(f"{s}: yaw flips on {rate:.0%} of {len(turned)} turned faces")
        assert len(turned) >= 10 and rate >= 0.9


# --- 4. emotion confidence -------------------------------------------------------------------

def test_emotion_confident_column_and_caption_word():
    probs = np.array([0.7, 0, 0, 0.1, 0.1, 0, 0.1], np.float32)  # "angry" at 0.7: not trusted
    cols = emotion_columns(probs, 0.5)
    assert cols["emotion"] == "angry" and cols["emotion_confident"] is False
    assert cols["emotion_confident_threshold"] == pytest.approx(aschema.EMOTION_CONFIDENT_THRESHOLD)
    sure = emotion_columns(np.array([0, 0, 0, 0.95, 0, 0, 0.05], np.float32), 0.5)
    assert sure["emotion"] == "happy" and sure["emotion_confident"] is True
    assert set(aschema.EMOTION_FIELDS[i].name for i in range(len(aschema.EMOTION_FIELDS))) >= {
        "emotion_probs", "emotion_confident"}


def labelled_faces() -> list[tuple[str, str]]:
    with open(LABELS) as f:
        return [(r["path"], r["label"]) for r in csv.DictReader(line for line in f if not line.startswith("#"))]


@needs_faces
def test_confident_emotions_are_right_on_the_labelled_lfw_faces(detector):
    rows = [(p, label) for p, label in labelled_faces() if p.startswith("lfw10/")]
    assert len(rows) >= 60
    dets = detector.process([Sample(p, "x", read_rgb(FACES / p)) for p, _ in rows])
    stage = Attributes(device="cpu")
    stage.setup()
    res = stage.process([Sample(p, "x", d.frame, frame="aligned", upstream={"detect": d})
                         for (p, _), d in zip(rows, dets)])
    confident = [(r.columns["emotion"], label) for r, (_, label) in zip(res, rows) if r.columns["emotion_confident"]]
    argmax_right = np.mean([r.columns["emotion"] == label for r, (_, label) in zip(res, rows)])
    precision = np.mean([e == label for e, label in confident])
    print(f"confident {len(confident)}/{len(rows)}, precision {precision:.2f}; all labels right {argmax_right:.2f}")
    assert len(confident) >= 0.25 * len(rows) and precision >= 0.9

