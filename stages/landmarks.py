"""The ``landmarks`` stage: mediapipe face mesh on the CPU, plus what the mesh gives for free.

Per sample: the mesh points (``lmk.npy``), a z-buffered depth map of the mesh (``depth.png``),
a pseudo mask drawn from landmark loops (``mask.png``) and a PnP head pose. Columns and
conventions are in ``schemas/landmarks.py``; mask classes in ``schemas/pseudo_mask.py``.

Background faces in the aligned crop are recorded (``n_faces``), not an error: the kept mesh is
the one matching detect's five crop points (the centred one without detect,
``stages/face_choice.py``). Only a real ambiguity, a second face of similar size where the
face is expected, is the error ``multiple_faces``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from schemas import landmarks as schema
from schemas.pseudo_mask import CLASSES
from stages import face_choice, geometry
from stages.base import Provenance, Result, Sample, Stage

N_MESH = 468


def mediapipe_dir() -> Path:
    """The installed mediapipe package directory (without importing mediapipe)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("mediapipe is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def landmark_model(refine: bool) -> Path:
    """The bundled tflite that FaceMesh runs (the attention model when refining)."""
    name = "face_landmark_with_attention.tflite" if refine else "face_landmark.tflite"
    return mediapipe_dir() / "modules" / "face_landmark" / name


@functools.cache
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class LandmarksStage(Stage):
    """468/478-point mediapipe face mesh, mesh depth map, pseudo mask and head pose."""

    name: ClassVar[str] = "landmarks"
    version: ClassVar[str] = "2"
    optional_reads: ClassVar[tuple[str, ...]] = ("detect",)
    """Its five crop points pick the mesh among several faces; never required."""
    schema: ClassVar[pa.Schema] = schema.SCHEMA
    files: ClassVar[tuple[str, ...]] = ("lmk.npy", "depth.png", "mask.png")
    gpus: ClassVar[float] = 0.0
    limits: ClassVar[dict] = {"min_detection_confidence": "[0, 1]", "max_faces": "[1, inf)",
                              "batch_size": "[1, inf)"}

    refine: bool = False
    """Use mediapipe's attention mesh: 478 points (10 iris points appended), refined eyes/lips."""
    min_detection_confidence: float = 0.5
    """mediapipe face-detector score below which a face is not seen."""
    max_faces: int = 3
    """Faces mediapipe looks for (background faces are counted in ``n_faces`` and ignored;
    two similar faces at the expected place are 'multiple_faces'). 1 skips that check."""
    batch_size: int = 16
    """Samples per process() call (mediapipe runs one image at a time anyway)."""

    # built by setup(); unannotated so they are not config fields
    _mesh = None  # mediapipe FaceMesh
    _model = None  # geometry.FaceModel

    def check_config(self) -> None:
        try:
            path = landmark_model(self.refine)
        except ModuleNotFoundError:
            raise ValueError("the landmarks stage needs mediapipe (pip install mediapipe)") from None
        if not path.is_file():
            raise ValueError(f"mediapipe's bundled face landmark model is missing: {path}")
        geometry.load_face_model()

    def setup(self) -> None:
        # mediapipe's C++ side logs a few warnings per worker; keep the terminal readable.
        os.environ.setdefault("GLOG_minloglevel", "2")
        from stages import mediapipe_import

        self.close()
        self._mesh = mediapipe_import.face_mesh().FaceMesh(
            static_image_mode=True,
            max_num_faces=self.max_faces,
            refine_landmarks=self.refine,
            min_detection_confidence=self.min_detection_confidence,
        )
        self._model = geometry.load_face_model()
        _sha256(landmark_model(self.refine))

    def close(self) -> None:
        """Release the mediapipe graph (a failed graph may refuse to close: drop it anyway)."""
        mesh, self._mesh = self._mesh, None
        if mesh is not None:
            with contextlib.suppress(Exception):
                mesh.close()

    def __getstate__(self) -> dict[str, Any]:
        # the mediapipe graph cannot be pickled; a worker rebuilds it in setup()
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def provenance(self) -> Provenance:
        path = landmark_model(self.refine)
        version = importlib.metadata.version("mediapipe")
        return Provenance(
            model="mediapipe_face_mesh",
            weights=f"mediapipe=={version} {path.name}",
            weights_sha256=_sha256(path),
            weights_random=False,
        )

    def compute(self, batch: list[Sample]) -> list[Result]:
        return [self._one(s) for s in batch]

    def _one(self, sample: Sample) -> Result:
        img = sample.image
        h, w = img.shape[:2]
        if self._mesh is None:  # rebuilt after a graph error (see below)
            self.setup()
        try:
            found = self._mesh.process(np.ascontiguousarray(img)).multi_face_landmarks or []
        except Exception as exc:  # noqa: BLE001 - one bad image must not sink the batch
            self.close()  # the graph may be left in an error state: the next sample rebuilds it
            return Result.fail(f"landmarks_failed: {type(exc).__name__}")
        if not found:
            return Result.fail("no_face")
        meshes = [np.array([(p.x * w, p.y * h, p.z * w) for p in f.landmark], np.float32) for f in found]
        meshes = [m for m in meshes if np.isfinite(m).all()]
        if not meshes:
            return Result.fail("landmarks_failed: nonfinite")
        in_crop = sample.frame != "source"  # detect's points pick the mesh only in its crop
        choice = face_choice.choose_mesh(meshes, w, h, sample.points5() if in_crop else None)
        if choice.ambiguous:
            return Result.fail("multiple_faces")
        try:
            result = self._annotate(meshes[choice.index], h, w)
            result.columns["n_faces"] = len(found)
            return result
        except Exception as exc:  # noqa: BLE001
            return Result.fail(f"landmarks_failed: {type(exc).__name__}")

    def _annotate(self, pts: np.ndarray, h: int, w: int) -> Result:
        """Columns and files for one face's mesh points."""
        zbuf = geometry.render_depth(pts[:N_MESH], self._model.triangles, (h, w))
        depth = geometry.depth_to_uint16(zbuf)
        mask = geometry.draw_mask(pts, CLASSES, (h, w))
        try:
            yaw, pitch, roll, rmse = geometry.head_pose(pts[:N_MESH, :2], self._model.vertices, w, h)
        except cv2.error:
            yaw = pitch = roll = rmse = None
        lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
        eyes = pts[schema.LEFT_EYE_OUTER, :2] - pts[schema.RIGHT_EYE_OUTER, :2]
        columns = {
            "mesh": schema.MESH_478 if len(pts) > N_MESH else schema.MESH_468,
            "n_landmarks": len(pts),
            "bbox_x0": float(lo[0]),
            "bbox_y0": float(lo[1]),
            "bbox_x1": float(hi[0]),
            "bbox_y1": float(hi[1]),
            "interocular_px": float(np.hypot(*eyes)),
            "yaw": yaw,
            "pitch": pitch,
            "roll": roll,
            "pose_rmse_px": rmse,
            "face_frac": float((depth > 0).mean()),
        }
        files = {"lmk.npy": pts, "depth.png": depth, "mask.png": mask}
        return Result(columns=columns, files=files)
