"""The landmarks stage on real photos (mediapipe face mesh on the CPU)."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("mediapipe")

from schemas import landmarks as lschema  # noqa: E402
from schemas import pseudo_mask as pm  # noqa: E402
from schemas.shard import MEMBERS  # noqa: E402
from stages.base import ERROR, OK, Sample  # noqa: E402
from stages.geometry import load_face_model  # noqa: E402
from stages.landmarks import LandmarksStage  # noqa: E402

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
LFW = FACES / "lfw10"
TWO_PEOPLE = FACES / "face_recognition" / "extra" / "two_people.jpg"
FRONTAL = LFW / "George_W_Bush" / "George_W_Bush_0001.jpg"
TURNED = LFW / "Donald_Rumsfeld" / "Donald_Rumsfeld_0005.jpg"  # nose towards image left

needs_faces = pytest.mark.skipif(not LFW.is_dir(), reason=f"real face photos not found at {FACES}")


def load_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def sample(img: np.ndarray, key: str = "k") -> Sample:
    return Sample(key=key, identity="id", image=img)


@pytest.fixture(scope="module")
def stage() -> LandmarksStage:
    s = LandmarksStage()
    s.check()
    s.setup()
    yield s
    s.close()


def run_one(stage: LandmarksStage, img: np.ndarray):
    (res,) = stage.process([sample(img)])
    return res


def decode(res) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lmk = np.load(io.BytesIO(res.files["lmk.npy"]), allow_pickle=False)
    depth = cv2.imdecode(np.frombuffer(res.files["depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    mask = cv2.imdecode(np.frombuffer(res.files["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    return lmk, depth, mask


def edges(loop: list[int]) -> set[tuple[int, int]]:
    return {tuple(sorted(e)) for e in zip(loop, loop[1:] + loop[:1])}


def chain_edges(chain: list[int]) -> set[tuple[int, int]]:
    return {tuple(sorted(e)) for e in zip(chain, chain[1:])}


def test_hardcoded_loops_match_mediapipe_connections():
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def undirected(s):
        return {tuple(sorted(e)) for e in s}

    assert edges(pm.FACE_OVAL) == undirected(fmc.FACEMESH_FACE_OVAL)
    assert edges(pm.LEFT_EYE) == undirected(fmc.FACEMESH_LEFT_EYE)
    assert edges(pm.RIGHT_EYE) == undirected(fmc.FACEMESH_RIGHT_EYE)
    for loop, brow in ((pm.LEFT_BROW, fmc.FACEMESH_LEFT_EYEBROW), (pm.RIGHT_BROW, fmc.FACEMESH_RIGHT_EYEBROW)):
        assert undirected(brow) <= edges(loop) and len(edges(loop) - undirected(brow)) == 2
    lips = undirected(fmc.FACEMESH_LIPS)
    assert edges(pm.MOUTH) <= lips  # the inner loop
    chains = (pm.LIPS_OUTER_UPPER, pm.LIPS_OUTER_LOWER, pm.LIPS_INNER_UPPER, pm.LIPS_INNER_LOWER)
    assert set().union(*(chain_edges(c) for c in chains)) == lips
    assert len(edges(pm.UPPER_LIP) - lips) == 2 and len(edges(pm.LOWER_LIP) - lips) == 2
    # nose: our own outline, made of tessellation edges, around FACEMESH_NOSE's nostril rim
    assert edges(pm.NOSE) <= undirected(fmc.FACEMESH_TESSELATION)
    rim = {i for e in fmc.FACEMESH_NOSE for i in e} - {168, 6, 197, 195, 5, 4, 1, 19, 94}
    model = load_face_model()
    xy = model.vertices[:, :2].astype(np.float32)
    assert all(cv2.pointPolygonTest(xy[pm.NOSE], tuple(map(float, xy[i])), False) >= 0 for i in rim)
    # the face model's left/right twins agree with mediapipe's LEFT_*/RIGHT_* naming
    for left, right in ((pm.LEFT_EYE, pm.RIGHT_EYE), (pm.LEFT_BROW, pm.RIGHT_BROW)):
        assert sorted(model.mirror[left]) == sorted(right)


def test_classes_and_schema_declarations():
    ids = [i for i, _, _ in pm.CLASSES]
    assert ids == sorted(set(ids)) and pm.BACKGROUND not in ids and max(ids) < 256
    assert all(max(loop) < 468 for _, _, loop in pm.CLASSES)
    assert LandmarksStage.name == "landmarks" and LandmarksStage.gpus == 0
    assert LandmarksStage.schema is lschema.SCHEMA
    for suffix in LandmarksStage.files:
        assert MEMBERS[suffix][0] == "landmarks"


def test_check_rejects_bad_config():
    for bad in (dict(min_detection_confidence=1.5), dict(max_faces=0), dict(batch_size=0)):
        with pytest.raises(ValueError):
            LandmarksStage(**bad).check()


def test_provenance_and_pickle(stage):
    prov = stage.provenance()
    assert prov.model == "mediapipe_face_mesh" and not prov.weights_random
    assert prov.weights.startswith("mediapipe==") and prov.weights.endswith("face_landmark.tflite")
    assert len(prov.weights_sha256) == 64
    clone = pickle.loads(pickle.dumps(stage))
    assert clone.config() == stage.config() and clone._mesh is None


@needs_faces
def test_frontal_face_outputs(stage):
    img = load_rgb(FRONTAL)
    h, w = img.shape[:2]
    res = run_one(stage, img)
    assert res.status == OK, res.error
    pa.Table.from_pylist([res.columns], schema=lschema.SCHEMA)  # columns match the schema exactly
    assert set(res.columns) == set(lschema.SCHEMA.names)
    assert set(res.files) == set(LandmarksStage.files)
    lmk, depth, mask = decode(res)

    assert lmk.dtype == np.float32 and lmk.shape == (468, 3)
    assert res.columns["mesh"] == lschema.MESH_468 and res.columns["n_landmarks"] == 468
    assert (lmk[:, 0] >= 0).all() and (lmk[:, 0] < w).all() and (lmk[:, 1] >= 0).all() and (lmk[:, 1] < h).all()
    left_eye, right_eye = lmk[pm.LEFT_EYE, :2].mean(0), lmk[pm.RIGHT_EYE, :2].mean(0)
    mouth = lmk[pm.UPPER_LIP + pm.LOWER_LIP, :2].mean(0)
    assert max(left_eye[1], right_eye[1]) < mouth[1]  # eyes above the mouth
    assert right_eye[0] < lmk[1, 0] < left_eye[0]  # nose tip between the eyes; subject's left = image right
    assert res.columns["interocular_px"] > 0.2 * w
    assert abs(res.columns["yaw"]) < 20 and abs(res.columns["roll"]) < 15

    assert depth.dtype == np.uint16 and depth.shape == (h, w)
    assert depth[0, 0] == depth[0, -1] == depth[-1, 0] == depth[-1, -1] == 0
    assert depth.max() == 65535 and depth[depth > 0].min() >= 1
    nose = np.rint(lmk[1, :2] - 0.5).astype(int)
    assert depth[nose[1], nose[0]] > np.percentile(depth[depth > 0], 90)  # nose tip is near
    assert res.columns["face_frac"] == pytest.approx((depth > 0).mean())

    assert mask.dtype == np.uint8 and mask.shape == (h, w)
    assert set(np.unique(mask)) == {pm.BACKGROUND} | {i for i, _, _ in pm.CLASSES}
    assert mask[0, 0] == pm.BACKGROUND
    le = np.nonzero(mask == pm.IDS["left_eye"])[1].mean()
    re = np.nonzero(mask == pm.IDS["right_eye"])[1].mean()
    assert le > re


def eyes_of(res):
    """Columns, then the mean x of the subject's left and right eye landmarks."""
    assert res.status == OK, res.error
    lmk = decode(res)[0]
    return res.columns, lmk[pm.LEFT_EYE, 0].mean(), lmk[pm.RIGHT_EYE, 0].mean()


def pose_and_eyes(stage, img):
    return eyes_of(run_one(stage, img))


@needs_faces
def test_mirror_flips_yaw_roll_and_swaps_eyes(stage):
    checked_yaw = checked_roll = 0
    for path in sorted(LFW.glob("*/*_000[1-3].jpg")):
        img = load_rgb(path)
        res = run_one(stage, img)
        if res.status != OK:
            continue
        cols, left_x, right_x = eyes_of(res)
        mcols, mleft_x, mright_x = pose_and_eyes(stage, np.ascontiguousarray(img[:, ::-1]))
        # The subject's left eye is always on the image's right; mirroring makes the old right
        # eye the new left one, so the two eyes' landmarks trade places across the flip.
        w = img.shape[1]
        assert left_x > right_x and mleft_x > mright_x, path.name
        assert mleft_x == pytest.approx(w - right_x, abs=3) and mright_x == pytest.approx(w - left_x, abs=3)
        assert abs(cols["pitch"] - mcols["pitch"]) < 8, path.name
        if abs(cols["yaw"]) > 5:
            assert np.sign(mcols["yaw"]) == -np.sign(cols["yaw"]), path.name
            checked_yaw += 1
            if abs(cols["roll"]) > 2:
                assert np.sign(mcols["roll"]) == -np.sign(cols["roll"]), path.name
                checked_roll += 1
    assert checked_yaw >= 3 and checked_roll >= 2


@needs_faces
def test_yaw_and_roll_signs_follow_the_image(stage):
    cols, _, _ = pose_and_eyes(stage, load_rgb(TURNED))
    assert cols["yaw"] > 15  # the nose points towards image left
    img = load_rgb(FRONTAL)
    h, w = img.shape[:2]
    centre = (w / 2, h / 2)
    for angle in (-12, 12):  # cv2: positive = counter-clockwise on screen
        turned = cv2.warpAffine(img, cv2.getRotationMatrix2D(centre, angle, 1.0), (w, h))
        cols, _, _ = pose_and_eyes(stage, turned)
        assert np.sign(cols["roll"]) == -np.sign(angle)


@needs_faces
def test_no_face_and_multiple_faces(stage):
    blank = np.full((200, 200, 3), 127, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    two = load_rgb(TWO_PEOPLE)
    face = load_rgb(FRONTAL)
    results = stage.process([sample(face, "a"), sample(blank, "b"), sample(noise, "c"), sample(two, "d"),
                             sample(None, "e"), sample(face, "f")])
    assert [r.status for r in results] == [OK, ERROR, ERROR, ERROR, ERROR, OK]
    assert [r.error for r in results[1:5]] == ["no_face", "no_face", "multiple_faces", "bad_image"]
    assert all(not r.columns and not r.files for r in results[1:5])


@needs_faces
def test_unexpected_failure_is_isolated(stage):
    face = load_rgb(FRONTAL)
    s = LandmarksStage()
    s.setup()
    real = s._mesh

    class Flaky:
        def process(self, img):
            if img.shape[0] == 99:
                raise RuntimeError("boom")
            return real.process(img)

        def close(self):
            real.close()

    s._mesh = Flaky()
    odd = np.zeros((99, 99, 3), np.uint8)
    results = s.process([sample(odd, "x"), sample(face, "y")])
    assert results[0].status == ERROR and results[0].error == "landmarks_failed: RuntimeError"
    assert results[1].status == OK  # setup() rebuilt the graph for the next sample
    s.close()


@needs_faces
def test_refined_mesh_has_478_points_with_irises_in_the_eyes():
    s = LandmarksStage(refine=True)
    s.check()
    assert s.provenance().weights.endswith("face_landmark_with_attention.tflite")
    res = run_one(s, load_rgb(FRONTAL))
    s.close()
    assert res.status == OK, res.error
    lmk, _, mask = decode(res)
    assert lmk.shape == (478, 3) and res.columns["mesh"] == lschema.MESH_478
    pa.Table.from_pylist([res.columns], schema=lschema.SCHEMA)
    for centre, eye in ((468, "right_eye"), (473, "left_eye")):
        poly = lmk[pm.LOOPS[eye], :2].astype(np.float32)
        assert cv2.pointPolygonTest(poly, tuple(map(float, lmk[centre, :2])), False) > 0


def test_face_mesh_import_defers_pyplot_and_pyplot_still_works():
    """mediapipe's package imports matplotlib.pyplot for drawing helpers (~0.6-0.9 s of every
    worker's start) and sounddevice for audio tasks; stages.mediapipe_import defers both until used."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from stages import mediapipe_import\n"
            "mesh = mediapipe_import.face_mesh()\n"
            "from mediapipe.python.solutions import face_mesh, drawing_utils\n"
            "assert mesh is face_mesh and hasattr(mesh, 'FaceMesh')\n"
            "assert type(sys.modules['matplotlib.pyplot']).__name__ == '_DeferredModule'\n"
            "assert 'matplotlib.figure' not in sys.modules\n"
            "assert type(sys.modules['sounddevice']).__name__ == '_DeferredModule'\n"
            "from mediapipe.tasks.python.audio.core import audio_record\n"
            "assert audio_record.sd is sys.modules['sounddevice']\n"  # recording would import it then
            "import matplotlib\n"
            "matplotlib.use('Agg')\n"
            "import matplotlib.pyplot as plt\n"
            "fig = drawing_utils.plt.figure(figsize=(1, 1))\n"  # mediapipe's own name for it, now real
            "assert type(fig).__name__ == 'Figure' and plt.gcf() is fig and matplotlib.pyplot.gcf() is fig\n"
            "assert type(sys.modules['matplotlib.pyplot']).__name__ == 'module'\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]
