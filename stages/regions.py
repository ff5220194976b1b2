"""Which face regions a sentence talks about, and the parsing classes those regions cover.

Pure Python (``re`` only). ``split_sentences`` cuts a paragraph into sentences (also at line
breaks, dropping list bullets and Markdown emphasis, as VLMs often answer in lists);
``tag_regions`` returns the regions named in a sentence, in ``REGIONS`` order, by whole-word,
case-insensitive matching of the region's terms. Longer terms win where terms overlap, so
"facial hair" is ``beard`` (not ``hair``) and "eyebrows" is ``brows`` (not ``eyes``). A
sentence that names a region only to deny it ("no beard") still talks about it and is tagged.

``REGION_PARSING`` ties regions to the CelebAMask-HQ classes of ``schemas/parsing.py``.
That label set has no class for facial hair, cheeks, chin or forehead: those regions map to
``skin`` (where the annotators put them); ``mouth`` covers the lips too.
"""
from __future__ import annotations

import re

REGIONS: dict[str, tuple[str, ...]] = {
    "eyes": ("eye", "eyes", "iris", "irises", "pupil", "pupils", "eyelash", "eyelashes", "lashes",
             "eyelid", "eyelids", "eyeliner", "eye shadow", "eyeshadow", "gaze", "crow's feet",
             "under-eye", "under the eyes"),
    "brows": ("eyebrow", "eyebrows", "brow", "brows", "unibrow"),
    "nose": ("nose", "noses", "nostril", "nostrils", "bridge of the nose", "nasal bridge"),
    "mouth": ("mouth", "teeth", "tooth", "smile", "smiles", "smiling", "grin", "grinning"),
    "lips": ("lip", "lips", "lipstick"),
    "hair": ("hair", "hairline", "hairstyle", "haircut", "bangs", "fringe", "curls", "ponytail",
             "braid", "braids", "bun", "bald", "balding", "locks"),
    "beard": ("beard", "bearded", "stubble", "mustache", "moustache", "goatee", "sideburns",
              "facial hair", "five o'clock shadow", "clean-shaven", "clean shaven"),
    "skin": ("skin", "complexion", "freckles", "freckled", "wrinkles", "wrinkled", "pores", "acne",
             "blemish", "blemishes", "mole", "moles", "tanned", "scar", "scars", "makeup"),
    "ears": ("ear", "ears", "earlobe", "earlobes"),
    "chin_jaw": ("chin", "chins", "jaw", "jaws", "jawline", "double chin"),
    "cheeks": ("cheek", "cheeks", "cheekbone", "cheekbones", "dimple", "dimples"),
    "forehead": ("forehead", "temple", "temples"),
    "glasses": ("glasses", "eyeglasses", "spectacles", "sunglasses"),
    "earrings": ("earring", "earrings"),
    "hat": ("hat", "hats", "cap", "beanie", "headscarf", "hood", "helmet", "turban"),
    "neck": ("neck", "throat"),
    "necklace": ("necklace", "pendant", "choker"),
    "clothes": ("shirt", "collar", "jacket", "suit", "tie", "necktie", "dress", "sweater", "blouse",
                "coat", "clothing", "clothes", "t-shirt", "hoodie"),
}

REGION_PARSING: dict[str, tuple[str, ...]] = {
    "eyes": ("l_eye", "r_eye"),
    "brows": ("l_brow", "r_brow"),
    "nose": ("nose",),
    "mouth": ("mouth", "u_lip", "l_lip"),
    "lips": ("u_lip", "l_lip"),
    "hair": ("hair",),
    "beard": ("skin",),
    "skin": ("skin",),
    "ears": ("l_ear", "r_ear"),
    "chin_jaw": ("skin",),
    "cheeks": ("skin",),
    "forehead": ("skin",),
    "glasses": ("eye_g",),
    "earrings": ("ear_r",),
    "hat": ("hat",),
    "neck": ("neck",),
    "necklace": ("neck_l",),
    "clothes": ("cloth",),
}

_TERM_REGION = {term: region for region, terms in REGIONS.items() for term in terms}
_TERMS = re.compile(
    r"(?<![\w'-])(?:%s)(?![\w'-])" % "|".join(
        re.escape(t).replace(r"\ ", r"\s+") for t in sorted(_TERM_REGION, key=len, reverse=True)),
    re.I)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<![A-Z])(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)([.!?])\s+(?=[\"'(A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph, stripped; list items and lines count as sentences too."""
    sentences = []
    for line in text.replace("\r", "\n").split("\n"):
        line = _BULLET.sub("", line.replace("**", "").replace("__", "")).strip()
        if not line:
            continue
        start = 0
        for match in _SENTENCE_END.finditer(line):
            sentences.append(line[start:match.end(1)].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if re.search(r"[A-Za-z]", s)]


def tag_regions(sentence: str) -> list[str]:
    """Regions the sentence names, in ``REGIONS`` order."""
    found = {_TERM_REGION[re.sub(r"\s+", " ", m.group(0).lower())] for m in _TERMS.finditer(sentence)}
    return [r for r in REGIONS if r in found]


def parsing_classes(regions: list[str]) -> list[str]:
    """The parsing classes (``schemas/parsing.py`` names) of some regions, without repeats."""
    return list(dict.fromkeys(c for r in regions for c in REGION_PARSING[r]))


def tag_paragraph(text: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(sentences, regions per sentence, parsing classes per sentence) of a paragraph."""
    sentences = split_sentences(text)
    regions = [tag_regions(s) for s in sentences]
    return sentences, regions, [parsing_classes(r) for r in regions]
