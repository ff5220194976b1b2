"""FairFace (Kärkkäinen & Joo, WACV 2021): ResNet-34 age, gender and race classifier.

A registry slot only (``pipeline weights`` names its file and where to get it); no loader yet,
so the attributes stage refuses it in ``check()`` and uses CLIP zero-shot instead.
"""
from __future__ import annotations

from stages.models import registry
from stages.models.registry import WeightsSpec

FAIRFACE = "fairface_res34"

registry.register(WeightsSpec(
    name=FAIRFACE,
    family="fairface",
    filename="res34_fair_align_multi_7_20190809.pt",
    sha256="",  # not published upstream; pin after a trusted download
    urls=("https://github.com/dchen236/FairFace (README: pretrained models, Google Drive)",),
    license="CC BY 4.0 (dchen236/FairFace; check upstream)",
    input="224x224 RGB dlib-aligned face, ImageNet mean/std",
    extra={"outputs": "18 logits: 7 race, 2 gender, 9 age bins (0-2 ... 70+)",
           "status": "registry slot only: no loader yet"},
))
