"""The model families: family name -> the ``load_<family>`` function that builds it.

Each family module registers its ``WeightsSpec`` entries in ``registry`` when imported, so
importing this package registers every known weights file. A loader has the signature
``load_<family>(name, root=None, device="cpu", dtype="fp32", random_init=False) -> nn.Module``
and returns the model in eval mode on ``device``; ``random_init`` builds the real architecture
without reading any file (provenance then says weights_random).

To add a family: write ``stages/models/<family>.py`` and add one import and one entry below.
"""
from __future__ import annotations

from typing import Any, Callable

from stages.models import registry
from stages.models.arcface import load_arcface
from stages.models.codeformer import load_codeformer
from stages.models.emotion import load_emotion
from stages.models import fairface  # noqa: F401 - registers its slot (no loader yet)
from stages.models.fiqa import load_fiqa
from stages.models.hopenet import load_hopenet
from stages.models.insightface import load_insightface
from stages.models.mobilefacenet import load_mobilefacenet
from stages.models.parsing import load_parsing
from stages.models.retinaface import load_retinaface
from stages.models.tddfa import load_tddfa

FAMILIES: dict[str, Callable[..., Any]] = {
    "retinaface": load_retinaface,
    "mobilefacenet": load_mobilefacenet,
    "arcface": load_arcface,
    "tddfa": load_tddfa,
    "emotion": load_emotion,
    "codeformer": load_codeformer,
    "hopenet": load_hopenet,
    "parsing": load_parsing,
    "fiqa": load_fiqa,
    "insightface": load_insightface,
}


def load(name: str, root: Any = None, device: Any = "cpu", dtype: Any = "fp32",
         random_init: bool = False) -> Any:
    """Build the model registered as ``name`` with the loader of its family."""
    spec = registry.get(name)
    try:
        loader = FAMILIES[spec.family]
    except KeyError:
        raise KeyError(f"weights '{name}' names family '{spec.family}', which has no loader") from None
    return loader(name, root=root, device=device, dtype=dtype, random_init=random_init)
