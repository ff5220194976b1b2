"""Build ``face_model.npz``: a canonical 3-D face for the 468-point mediapipe mesh.

mediapipe 0.10.21's wheel does not ship the canonical face model (its ``face_geometry/data``
package is empty), so we derive our own from mediapipe's own 3-D predictions on real photos
(``shared/faces``: 237 single-face shapes from LFW and the other test photos, each photo also
mirrored): generalised Procrustes mean, turned to the photos' average camera-frame pose (so
zero pitch is "as people face a camera"), then made exactly left/right symmetric, which fixes
zero yaw and roll. Triangles are the faces of FACEMESH_TESSELATION: its edge graph's
3-cliques less the separating 3-cycles (852 faces, a disk with the eye and mouth openings),
plus strips that close those openings so the depth map has no holes. Run once, by hand:

    python -m stages.data.build_face_model [/work/shared/faces]

Arrays written (model frame: x towards the subject's left = image right on a frontal photo,
y down, z away from the camera, so identity rotation = frontal; units ~cm, outer eye corners
9 cm apart; origin at the vertex centroid):
  vertices (468, 3) float32, triangles (K, 3) int32 (the tessellation's faces, oriented),
  hole_triangles (M, 3) int32 (strips closing the eye and mouth openings),
  mirror (468,) int32 (index of each vertex's left/right twin), n_shapes (photos averaged).
"""
from __future__ import annotations

import collections
import itertools
import sys
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent / "face_model.npz"
EYE_CORNERS = (33, 263)
INTEROCULAR_CM = 9.0


def collect(root: Path) -> list[np.ndarray]:
    """mediapipe landmarks (468, 3) in pixels for every single-face photo and its mirror."""
    from mediapipe.python.solutions import face_mesh

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    shapes = []
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=2) as mesh:
        for path in files:
            bgr = cv2.imread(str(path))
            if bgr is None:
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            for img in (rgb, np.ascontiguousarray(rgb[:, ::-1])):
                faces = mesh.process(img).multi_face_landmarks or []
                if len(faces) == 1:
                    h, w = img.shape[:2]
                    pts = [(p.x * w, p.y * h, p.z * w) for p in faces[0].landmark]
                    shapes.append(np.asarray(pts, np.float64))
    return shapes


def kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Rotation R (proper) minimising |src @ R.T - dst| for centred point sets."""
    u, _, vt = np.linalg.svd(dst.T @ src)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def procrustes_mean(shapes: list[np.ndarray], iters: int = 20) -> np.ndarray:
    """Generalised Procrustes mean (translation, scale, rotation removed)."""
    norm = []
    for s in shapes:
        c = s - s.mean(0)
        norm.append(c / np.linalg.norm(c))
    mean = norm[0]
    for _ in range(iters):
        aligned = [s @ kabsch(s, mean).T for s in norm]
        mean = np.mean(aligned, 0)
        mean /= np.linalg.norm(mean)
    # The iteration fixes the shape, not its orientation (that of the first photo): turn it to
    # the photos' average camera-frame pose, so zero pitch means "as people face the camera".
    return mean @ kabsch(mean, np.mean(norm, 0)).T


def mirror_permutation(shape: np.ndarray, iters: int = 5) -> np.ndarray:
    """Each vertex's left/right twin: match the shape to its own reflection."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    c = shape - shape.mean(0)
    refl = c * [-1.0, 1.0, 1.0]
    perm = np.arange(len(c))
    for _ in range(iters):
        _, perm = linear_sum_assignment(cdist(c, refl))
        target = refl[perm]
        refl = refl @ kabsch(target, c).T
    return perm.astype(np.int32)


def symmetric_frame(shape: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Rotate so the symmetry plane is x = 0 with y down the face, then symmetrise exactly."""
    c = shape - shape.mean(0)
    across = c - c[mirror]
    x = np.linalg.svd(across, full_matrices=False)[2][0]
    if x @ (c[EYE_CORNERS[1]] - c[EYE_CORNERS[0]]) < 0:
        x = -x
    down = np.array([0.0, 1.0, 0.0])
    y = down - (down @ x) * x
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    s = c @ np.stack([x, y, z]).T
    s = 0.5 * (s + s[mirror] * [-1.0, 1.0, 1.0])
    return s - s.mean(0)


def mesh_faces(shape: np.ndarray) -> np.ndarray:
    """The tessellation's triangles: the 3-cliques of its edge graph, less separating 3-cycles.

    A separating 3-cycle (three edges of real faces that also close a loop around other
    vertices) shows up as a clique whose every edge is shared by three cliques.
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    adj: dict[int, set[int]] = collections.defaultdict(set)
    for a, b in FACEMESH_TESSELATION:
        adj[a].add(b)
        adj[b].add(a)
    cliques = {tuple(sorted((a, b, k))) for a in adj for b in adj[a] for k in adj[a] & adj[b]}
    uses = collections.Counter(e for t in cliques for e in itertools.combinations(t, 2))
    keep = [t for t in sorted(cliques) if min(uses[e] for e in itertools.combinations(t, 2)) < 3]
    return np.asarray([orient(t, shape[:, :2]) for t in keep], np.int32)


def orient(tri: tuple[int, ...], xy: np.ndarray) -> tuple[int, int, int]:
    """Order a triangle clockwise on screen (x right, y down) in the frontal view."""
    a, b, c = tri
    area = np.cross(xy[b] - xy[a], xy[c] - xy[a])
    return (a, b, c) if area > 0 else (a, c, b)


def zipper(upper: list[int], lower: list[int], xy: np.ndarray) -> list[tuple[int, int, int]]:
    """Triangle strip between two chains from one shared corner to the other (closes an opening)."""
    axis = xy[upper[-1]] - xy[upper[0]]
    along = (xy - xy[upper[0]]) @ axis
    i, j, out = 0, 0, []
    while i < len(upper) - 1 or j < len(lower) - 1:
        if j == len(lower) - 1 or (i < len(upper) - 1 and along[upper[i + 1]] <= along[lower[j + 1]]):
            tri = (upper[i], upper[i + 1], lower[j])
            i += 1
        else:
            tri = (upper[i], lower[j], lower[j + 1])
            j += 1
        if len(set(tri)) == 3:
            out.append(orient(tri, xy))
    return out


def hole_faces(shape: np.ndarray) -> np.ndarray:
    """Close the eye and mouth openings, which the tessellation leaves empty."""
    from schemas.pseudo_mask import LOOPS

    xy, faces = shape[:, :2], []
    for name in ("left_eye", "right_eye", "mouth"):
        loop = LOOPS[name]
        far = max(range(len(loop)), key=lambda k: abs(xy[loop[k], 0] - xy[loop[0], 0]))
        upper = loop[: far + 1]
        lower = [loop[0]] + loop[far:][::-1]
        faces += zipper(upper, lower, xy)
    return np.asarray(faces, np.int32)


def main(root: Path) -> None:
    shapes = collect(root)
    mean = procrustes_mean(shapes)
    mirror = mirror_permutation(mean)
    model = symmetric_frame(mean, mirror)
    model *= INTEROCULAR_CM / np.linalg.norm(model[EYE_CORNERS[1]] - model[EYE_CORNERS[0]])
    tris, holes = mesh_faces(model), hole_faces(model)
    np.savez_compressed(
        OUT, vertices=model.astype(np.float32), triangles=tris, hole_triangles=holes,
        mirror=mirror, n_shapes=np.int32(len(shapes)),
    )
    print(f"{OUT}: {len(shapes)} shapes, {len(tris)} triangles, {len(holes)} hole triangles")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "faces")
