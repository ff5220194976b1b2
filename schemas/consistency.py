"""Manifest columns of the ``consistency`` stage: do the annotations of one sample agree?

Each check compares two annotations of the same frame and is null when one of its inputs did not
run (or was not ok) for the sample:

* ``posenet_vs_pnp_deg``: the ``pose`` stage's head-pose net vs the ``landmarks`` stage's
  solvePnP pose; ``tddfa_vs_pnp_deg`` / ``tddfa_vs_posenet_deg``: the ``expression`` stage's
  3DDFA-V2 pose vs those two. Each is the mean over yaw, pitch and roll of the absolute angle
  difference (wrapped to [-180, 180]), degrees.
* ``facemask_vs_hull_iou``: IoU of the parsing stage's ``facemask.png`` and the convex hull of
  the landmarks (``lmk.npy``). The hull reaches the forehead while the mask stops at the hair
  line, so agreeing annotations score about 0.7-0.9, not 1.
* ``landmarks_in_box``: share of the landmarks inside detect's face box (grown by the stage's
  ``box_margin``), compared in source pixels (landmarks of a crop frame are mapped back with the
  inverse of detect's ``affine``).
* ``restore_cosine``: copied from the ``identity`` row: cosine of the identity embeddings before
  and after restoration.

``quality`` is ``good`` (no check failed), ``suspect`` or ``bad``; null when no check could run.
``quality_reasons`` names what failed, from ``REASONS``. ``random_stages`` lists the upstream
stages whose weights were random: their columns are not real annotations, so the row gets the
reason ``random_weights`` (and is ``bad`` by default).
"""
from __future__ import annotations

import pyarrow as pa

GOOD, SUSPECT, BAD = "good", "suspect", "bad"
VERDICTS = (GOOD, SUSPECT, BAD)

POSE_DISAGREEMENT = "pose_disagreement"
MASK_MISMATCH = "mask_mismatch"
LANDMARKS_OUTSIDE_BOX = "landmarks_outside_box"
IDENTITY_DRIFT = "identity_drift"
RANDOM_WEIGHTS = "random_weights"
REASONS = (POSE_DISAGREEMENT, MASK_MISMATCH, LANDMARKS_OUTSIDE_BOX, IDENTITY_DRIFT, RANDOM_WEIGHTS)

POSE_CHECKS = ("posenet_vs_pnp_deg", "tddfa_vs_pnp_deg", "tddfa_vs_posenet_deg")
# check column -> (failure reason, True when higher values are worse)
CHECKS: dict[str, tuple[str, bool]] = {
    "posenet_vs_pnp_deg": (POSE_DISAGREEMENT, True),
    "tddfa_vs_pnp_deg": (POSE_DISAGREEMENT, True),
    "tddfa_vs_posenet_deg": (POSE_DISAGREEMENT, True),
    "facemask_vs_hull_iou": (MASK_MISMATCH, False),
    "landmarks_in_box": (LANDMARKS_OUTSIDE_BOX, False),
    "restore_cosine": (IDENTITY_DRIFT, False),
}

SCHEMA = pa.schema(
    [
        pa.field("posenet_vs_pnp_deg", pa.float32()),  # pose net vs landmarks PnP, degrees
        pa.field("tddfa_vs_pnp_deg", pa.float32()),  # 3DDFA-V2 vs landmarks PnP, degrees
        pa.field("tddfa_vs_posenet_deg", pa.float32()),  # 3DDFA-V2 vs pose net, degrees
        pa.field("facemask_vs_hull_iou", pa.float32()),  # parsing face mask vs landmark hull
        pa.field("landmarks_in_box", pa.float32()),  # share of landmarks in detect's box
        pa.field("restore_cosine", pa.float32()),  # identity cosine before/after restore
        pa.field("quality", pa.string()),  # good | suspect | bad; null when nothing was checked
        pa.field("quality_reasons", pa.list_(pa.string())),  # failed checks, from REASONS
        pa.field("random_stages", pa.list_(pa.string())),  # upstream stages with random weights
    ]
)
