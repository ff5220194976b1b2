"""Classes of the landmark pseudo mask (``mask.png``) and the mesh loops that draw them.

``mask.png`` is a uint8 label map the size of the stage's image. Each class is a closed polygon
through mediapipe face-mesh landmark indices (the 468-point layout; the refined 478-point mesh
keeps the same first 468 indices). Classes are filled in ``CLASSES`` order, so later, smaller
parts overwrite the face. Pixels outside every polygon are ``BACKGROUND`` (0).

Left/right are the SUBJECT's: ``left_eye`` is the person's own left eye, which appears on the
image's right side in an unmirrored frontal photo. This matches mediapipe's FACEMESH_LEFT_* sets.

The loops are mediapipe's FACEMESH_* edge sets (``mediapipe.solutions.face_mesh_connections``)
put in order, hard-coded so that reading a mask needs no mediapipe; tests check they still
match. Open sets were closed as follows: a brow is its lower chain then its upper chain
reversed; a lip is its outer chain then its inner chain reversed; ``nose`` is our own loop of
tessellation edges (nasion at 168, down the side walls, around the nostrils via
FACEMESH_NOSE's rim 48-64-98-97-2 and its mirror), since FACEMESH_NOSE is a centre line plus
the nostril rim rather than an outline of the nose.
"""
from __future__ import annotations

BACKGROUND = 0

FACE_OVAL = [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
]
LEFT_BROW = [276, 283, 282, 295, 285, 336, 296, 334, 293, 300]
RIGHT_BROW = [46, 53, 52, 65, 55, 107, 66, 105, 63, 70]
LEFT_EYE = [263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249]
RIGHT_EYE = [33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7]
NOSE = [
    168, 193, 245, 188, 174, 236, 198, 209, 49, 48, 64, 98, 97,
    2, 326, 327, 294, 278, 279, 429, 420, 456, 399, 412, 465, 417,
]
LIPS_OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_OUTER_LOWER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_INNER_LOWER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
UPPER_LIP = LIPS_OUTER_UPPER + LIPS_INNER_UPPER[::-1]
LOWER_LIP = LIPS_OUTER_LOWER + LIPS_INNER_LOWER[::-1]
MOUTH = LIPS_INNER_UPPER + LIPS_INNER_LOWER[-2:0:-1]

# (id, name, closed loop of landmark indices), in drawing order
CLASSES: list[tuple[int, str, list[int]]] = [
    (1, "face", FACE_OVAL),
    (2, "nose", NOSE),
    (3, "left_brow", LEFT_BROW),
    (4, "right_brow", RIGHT_BROW),
    (5, "left_eye", LEFT_EYE),
    (6, "right_eye", RIGHT_EYE),
    (7, "upper_lip", UPPER_LIP),
    (8, "lower_lip", LOWER_LIP),
    (9, "mouth", MOUTH),
]

NAMES: dict[int, str] = {BACKGROUND: "background", **{i: n for i, n, _ in CLASSES}}
IDS: dict[str, int] = {n: i for i, n in NAMES.items()}
LOOPS: dict[str, list[int]] = {n: loop for _, n, loop in CLASSES}
