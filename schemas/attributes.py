"""Manifest columns of the ``attributes`` stage, its class lists and caption word lists.

Emotion (FER2013 mini-Xception): ``emotion_probs`` are the 7 softmax probabilities in
``EMOTIONS`` order (FER2013's label order). ``emotion`` is the arg-max class when its
probability is at least ``emotion_threshold`` (the threshold the stage ran with, recorded per
row so readers can re-threshold from the probabilities), else ``UNCERTAIN``.

Caption words: ``EMOTION_WORDS`` maps each class to the adjective a caption uses ("a happy
man"), in the style of PortraitBooth's emotion-aware prompts, which put one emotion word next
to the subject; ``EMOTION_SYNONYMS`` maps prompt words back to a class, for scoring generated
images against the prompt. ``neutral`` and ``uncertain`` rows get no emotion word.

Later attribute groups (age, gender, CelebA-style attributes by CLIP zero-shot) add their own
nullable columns here; a row leaves the columns of groups that were not run null.
"""
from __future__ import annotations

import pyarrow as pa

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
UNCERTAIN = "uncertain"

EMOTION_WORDS: dict[str, str | None] = {
    "angry": "angry",
    "disgust": "disgusted",
    "fear": "fearful",
    "happy": "happy",
    "sad": "sad",
    "surprise": "surprised",
    "neutral": None,
    UNCERTAIN: None,
}

EMOTION_SYNONYMS: dict[str, str] = {
    "angry": "angry", "furious": "angry", "mad": "angry", "annoyed": "angry",
    "disgusted": "disgust", "disgust": "disgust",
    "fearful": "fear", "scared": "fear", "afraid": "fear", "frightened": "fear", "terrified": "fear",
    "happy": "happy", "smiling": "happy", "laughing": "happy", "joyful": "happy", "cheerful": "happy",
    "sad": "sad", "crying": "sad", "upset": "sad", "unhappy": "sad", "sorrowful": "sad",
    "surprised": "surprise", "astonished": "surprise", "shocked": "surprise", "amazed": "surprise",
    "neutral": "neutral", "calm": "neutral", "expressionless": "neutral", "serious": "neutral",
}

EMOTION_FIELDS = [
    pa.field("emotion", pa.string()),  # one of EMOTIONS, or UNCERTAIN
    pa.field("emotion_probs", pa.list_(pa.float32())),  # 7 probabilities, EMOTIONS order
    pa.field("emotion_threshold", pa.float32()),  # minimum top probability for a label
]

SCHEMA = pa.schema(EMOTION_FIELDS)
