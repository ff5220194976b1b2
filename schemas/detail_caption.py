"""Columns of the ``detail_caption`` manifest: a vision-language model's two texts per face.

* ``short_caption``: the answer to the short prompt, person names removed, cut to at most
  ``max_words`` words (at the last sentence end inside the limit when there is one;
  ``short_truncated`` says whether anything was cut). Meant as a diffusion-training caption.
* ``detail``: the answer to the facial-detail prompt, names removed; ``detail_sentences`` are
  its sentences, and for each the face regions it talks about (``detail_regions``, names of
  ``stages/regions.REGIONS``) and the CelebAMask-HQ parsing classes those regions cover
  (``detail_parsing``, names of ``schemas/parsing.CLASSES``), so a sentence can be tied to the
  pixels of ``parsing.png``. A sentence naming no region has empty lists.
* ``*_raw`` keep the model's text as decoded, before any cleaning.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("short_caption", pa.string()),  # <= max_words words, names removed
        pa.field("short_caption_raw", pa.string()),  # as decoded
        pa.field("short_truncated", pa.bool_()),  # words were cut to fit max_words
        pa.field("detail", pa.string()),  # facial-detail paragraph, names removed
        pa.field("detail_raw", pa.string()),  # as decoded
        pa.field("detail_sentences", pa.list_(pa.string())),  # the paragraph's sentences
        pa.field("detail_regions", pa.list_(pa.list_(pa.string()))),  # per sentence: REGIONS names
        pa.field("detail_parsing", pa.list_(pa.list_(pa.string()))),  # per sentence: parsing classes
        pa.field("vlm_model", pa.string()),  # HF id or local directory of the model
    ]
)
