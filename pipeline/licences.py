"""Licence facts for the dataset card: the terms of each source dataset, each model's licence.

Model licences come from the weights registry (``WeightsSpec.license``); models that run
without a registry file (mediapipe) are listed here. Source terms are short summaries of what
each dataset's authors state; the original terms always prevail.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Terms:
    """A source dataset's terms of use, as far as the project knows them."""

    license: str
    """Hugging Face licence id (``other`` / ``unknown`` where no standard licence applies)."""
    name: str
    """Short name of the terms."""
    text: str
    """What the terms say, in a sentence or two; the original terms always prevail."""
    link: str = ""


SOURCE_TERMS: dict[str, Terms] = {
    "casia-webface": Terms("other", "CASIA-WebFace terms", (
        "Released by the Institute of Automation, Chinese Academy of Sciences (Yi et al. 2014, "
        "\"Learning Face Representation from Scratch\") for non-commercial research. The photos are of "
        "public figures collected from the web; their copyright stays with their owners. Use this "
        "derived dataset only under the terms you obtained CASIA-WebFace under.")),
    "celeba": Terms("other", "CelebA agreement", (
        "MMLAB, The Chinese University of Hong Kong: available for non-commercial research purposes only; "
        "the images and any derived data may not be reproduced, sold or exploited for commercial purposes. "
        "The images come from the web and are not the property of MMLAB."),
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"),
    "celeba-hq": Terms("other", "CelebA / CelebAMask-HQ terms", (
        "CelebA-HQ images are derived from CelebA and CelebAMask-HQ is released for non-commercial research "
        "and educational purposes only, under the same terms as CelebA (non-commercial research)."),
        "https://github.com/switchablenorms/CelebAMask-HQ"),
    "ffhq": Terms("cc-by-nc-sa-4.0", "FFHQ terms", (
        "The individual images were published on Flickr by their authors under CC BY 2.0, CC BY-NC 2.0, "
        "Public Domain Mark 1.0, CC0 1.0 or U.S. Government Works (each image's licence is in "
        "ffhq-dataset-v2.json, carried into the source metadata); the dataset itself (metadata, "
        "documentation) is CC BY-NC-SA 4.0 by NVIDIA Corporation."),
        "https://github.com/NVlabs/ffhq-dataset"),
    "sample": Terms("unknown", "LFW sample photos", (
        "Photos from Labeled Faces in the Wild (University of Massachusetts Amherst), taken from the test "
        "data of krasserm/face-recognition (Apache-2.0); the photos carry no licence of their own "
        "(pipeline/data/sample/ATTRIBUTION.md)."), "http://vis-www.cs.umass.edu/lfw/"),
}
UNKNOWN_TERMS = Terms("unknown", "not declared", (
    "The source declares no terms: state the licence of your photos here before publishing."))
# Models that run without a registry weights file (their licence is not in the registry).
UNREGISTERED_LICENSES = {"mediapipe_face_mesh": "Apache-2.0 (google-ai-edge/mediapipe)"}


def model_license(model: str | None) -> str:
    """The registry licence of a manifest ``model`` value (``family:name`` resolves by name)."""
    if not model:
        return "—"
    from stages.models import registry
    import stages.models  # noqa: F401  (registers every family)

    for name in (model, model.rsplit(":", 1)[-1]):
        if name in registry.REGISTRY:
            return registry.REGISTRY[name].license or "not recorded in the registry"
    return UNREGISTERED_LICENSES.get(model, "not in the weights registry")
