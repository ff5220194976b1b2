"""Names of the members of a training shard (``shards/NNNNN.tar``), one group per sample key.

Every ok sample has ``<key>.jpg`` (the frame the annotations live in) and ``<key>.json``
(identity, source info and every stage's manifest columns under the stage name). Each other
member is written by the stage named here.
"""
from __future__ import annotations

IMAGE = "jpg"  # the annotated frame: source JPEG bytes, or the aligned/restored crop re-encoded
META = "json"  # {"key", "identity": label, "source": {...}, "<section>": {columns...}} per stage

# The top-level "identity" is the sample's identity label; the identity *stage's* columns
# (embedding, dim, ...) therefore live under this section name instead of the stage name.
IDENTITY_SECTION = "identity_embedding"


def meta_section(stage: str) -> str:
    """The key of a stage's columns in ``<key>.json``."""
    return IDENTITY_SECTION if stage == "identity" else stage

# suffix -> (stage, description)
MEMBERS: dict[str, tuple[str, str]] = {
    "lmk.npy": ("landmarks", "float32 (N, 3) mediapipe mesh: x, y in pixels of the image, z in pixels"),
    "depth.png": ("landmarks", "uint16 depth from the mesh, 65535 = nearest, 0 = background"),
    "mask.png": ("landmarks", "uint8 pseudo mask label map, classes in schemas.pseudo_mask"),
    "id.npy": ("identity", "float32 (dim,) L2-normalised face embedding"),
    "expr.npy": ("expression", "float32 (10,) 3DDFA-V2 expression coefficients"),
    "raw.jpg": ("restore", "the aligned crop before restoration (the jpg is the restored one)"),
    "pose.png": ("pose", "RGB head-pose axes drawn from yaw/pitch/roll on a black canvas"),
    "parsing.png": ("parsing", "uint8 face-parsing label map, classes in schemas.parsing"),
    "gtparsing.png": ("source", "uint8 ground-truth parsing labels (celeba-hq) in the SOURCE image frame"),
    "facemask.png": ("parsing", "uint8 0/255 face mask (classes in schemas.parsing.FACE_MASK_CLASSES)"),
}


def member_name(key: str, suffix: str) -> str:
    if "." in key or "/" in key:
        raise ValueError(f"sample keys must be dot- and slash-free: {key!r}")
    return f"{key}.{suffix}"
