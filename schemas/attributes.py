"""Manifest columns of the ``attributes`` stage, its class lists and caption word lists.

Emotion (FER2013 mini-Xception): ``emotion_probs`` are the 7 softmax probabilities in
``EMOTIONS`` order (FER2013's label order). ``emotion`` is the arg-max class when its
probability is at least ``emotion_threshold`` (the threshold the stage ran with, recorded per
row so readers can re-threshold from the probabilities), else ``UNCERTAIN``.
``emotion_confident`` is true when the label is not ``UNCERTAIN`` and its probability reaches
``emotion_confident_threshold`` (``EMOTION_CONFIDENT_THRESHOLD`` = 0.85 by default, calibrated
on a labelled set of the shared photos: docs/wild.md). FER2013's model calls many neutral
faces angry or sad at 0.5-0.8; only confident labels reach captions and prompts.

Caption words: ``EMOTION_WORDS`` maps each class to the adjective a caption uses ("a happy
man"), in the style of PortraitBooth's emotion-aware prompts, which put one emotion word next
to the subject; ``EMOTION_SYNONYMS`` maps prompt words back to a class, for scoring generated
images against the prompt. ``neutral`` and ``uncertain`` rows get no emotion word.

Age, gender and the 40 CelebA attributes (CLIP zero-shot, prompts in
``schemas/attribute_prompts.py``; the age words cover roughly the years in ``AGE_RANGES``):
``*_probs`` hold the probabilities in ``AGE_BINS`` / ``GENDERS`` / ``CELEBA_ATTRIBUTES`` order. ``age_label`` and ``gender_label`` are the arg-max
class when its probability reaches the recorded ``*_threshold``, else ``UNCERTAIN``;
``celeba_labels[i]`` is ``celeba_probs[i] >= celeba_threshold``. With a CelebA source the
ground truth travels along: ``celeba_gt`` (null elements for attributes the file lacks, a null
list without ground truth) and ``celeba_gt_agreement``, the share of known attributes whose
label equals it. ``celeba_accuracy`` turns a manifest table into per-attribute accuracy.

Every group's columns are nullable: a row leaves the columns of groups that were not run null.

The caption stage compares its kept captions with ``emotion`` (``CAPTION_EMOTION_FIELDS``,
``caption_emotion_columns``): the class each caption names by an ``EMOTION_SYNONYMS`` word,
whether it agrees, and optionally the emotion word it inserted before the subject word. A label
that is not ``emotion_confident`` reaches the caption stage as ``UNCERTAIN`` (no word).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

EMOTION_CONFIDENT_THRESHOLD = 0.85
"""Calibrated: the lowest top probability (0.05 steps) whose confident labels were >= 95%
right on tests/fixtures/emotion_labels.csv (docs/wild.md)."""
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

# list_attr_celeba.txt column order (CelebA-HQ uses the same)
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)

AGE_BINS: tuple[str, ...] = ("child", "teenager", "young_adult", "middle_aged", "elderly")
AGE_RANGES: dict[str, tuple[int, int]] = {
    "child": (0, 12), "teenager": (13, 19), "young_adult": (20, 35), "middle_aged": (36, 59),
    "elderly": (60, 120),
}
GENDERS: tuple[str, ...] = ("female", "male")

EMOTION_FIELDS = [
    pa.field("emotion", pa.string()),  # one of EMOTIONS, or UNCERTAIN
    pa.field("emotion_probs", pa.list_(pa.float32())),  # 7 probabilities, EMOTIONS order
    pa.field("emotion_threshold", pa.float32()),  # minimum top probability for a label
    pa.field("emotion_confident", pa.bool_()),  # label trusted: top probability >= the next column
    pa.field("emotion_confident_threshold", pa.float32()),
]

AGE_FIELDS = [
    pa.field("age_label", pa.string()),  # one of AGE_BINS, or UNCERTAIN
    pa.field("age_probs", pa.list_(pa.float32())),  # 5 probabilities, AGE_BINS order
    pa.field("age_threshold", pa.float32()),
]
GENDER_FIELDS = [
    pa.field("gender_label", pa.string()),  # one of GENDERS, or UNCERTAIN
    pa.field("gender_probs", pa.list_(pa.float32())),  # 2 probabilities, GENDERS order
    pa.field("gender_threshold", pa.float32()),
]
CELEBA_FIELDS = [
    pa.field("celeba_probs", pa.list_(pa.float32())),  # 40, CELEBA_ATTRIBUTES order
    pa.field("celeba_labels", pa.list_(pa.bool_())),  # probs >= celeba_threshold
    pa.field("celeba_threshold", pa.float32()),
    pa.field("celeba_gt", pa.list_(pa.bool_())),  # source ground truth, null without
    pa.field("celeba_gt_agreement", pa.float32()),  # share of known attributes label == gt
]
CLIP_FIELDS = [pa.field("attributes_clip_model", pa.string())]  # HF id or directory; null without CLIP

SCHEMA = pa.schema(EMOTION_FIELDS + AGE_FIELDS + GENDER_FIELDS + CELEBA_FIELDS + CLIP_FIELDS)

CAPTION_EMOTION_FIELDS = [
    pa.field("attributes_emotion", pa.string()),  # the attributes row's emotion, null when not run
    pa.field("caption_emotions", pa.list_(pa.string())),  # class named by each kept caption, "" none
    pa.field("caption_emotion_agrees", pa.list_(pa.bool_())),  # null: no word, or label uncertain
    pa.field("emotion_word_added", pa.list_(pa.bool_())),  # the caption got EMOTION_WORDS[label]
]

_WORD = re.compile(r"[a-z]+")


def emotion_in_text(text: str) -> str | None:
    """The class of the first emotion word in ``text`` (EMOTION_SYNONYMS), None without one."""
    for word in _WORD.findall(text.lower()):
        if word in EMOTION_SYNONYMS:
            return EMOTION_SYNONYMS[word]
    return None


def insert_emotion_word(caption: str, span: Sequence[int], word: str) -> tuple[str, list[int]]:
    """Put ``word`` before the subject word at ``span`` ("a man" -> "an angry man")."""
    start, end = int(span[0]), int(span[1])
    if start < 0:
        return caption, [start, end]
    head = caption[:start]
    article = re.search(r"\b([Aa]n?) $", head)
    if article:  # keep the article grammatical for the new adjective
        wanted = "an" if word[:1].lower() in "aeiou" else "a"
        wanted = wanted.capitalize() if article.group(1)[0] == "A" else wanted
        head = head[:article.start(1)] + wanted + " "
    new = f"{head}{word} {caption[start:]}"
    shift = len(new) - len(caption)
    return new, [start + shift, end + shift]


def caption_emotion_columns(captions: Sequence[str], spans: Sequence[Sequence[int]], label: str | None,
                            add_word: bool) -> tuple[list[str], list[list[int]], dict[str, Any]]:
    """(captions, subject spans, agreement columns) of one sample's kept captions.

    ``label`` is the attributes stage's emotion (None when it was not run). With ``add_word``,
    a caption naming no emotion gets ``EMOTION_WORDS[label]`` before its subject word.
    """
    out, new_spans, named, agrees, added = [], [], [], [], []
    word = EMOTION_WORDS.get(label) if label else None
    for caption, span in zip(captions, spans):
        cls = emotion_in_text(caption)
        grew = bool(add_word and word and cls is None and span[0] >= 0)
        if grew:
            caption, span = insert_emotion_word(caption, span, word)
            cls = label
        out.append(caption)
        new_spans.append(list(span))
        named.append(cls or "")
        added.append(grew)
        agrees.append(None if cls is None or label in (None, UNCERTAIN) else cls == label)
    return out, new_spans, {"attributes_emotion": label, "caption_emotions": named,
                            "caption_emotion_agrees": agrees, "emotion_word_added": added}


def celeba_accuracy(table: pa.Table, threshold: float | None = None) -> list[dict[str, Any]]:
    """Per CelebA attribute: rows with ground truth, accuracy, and positive rates (gt, predicted).

    ``table`` is an attributes manifest (``status`` ok rows are used). Predictions are the stored
    ``celeba_labels``, or ``celeba_probs >= threshold`` when a threshold is given.
    """
    n_attr = len(CELEBA_ATTRIBUTES)
    keep = pc.and_(pc.is_valid(table["celeba_gt"]), pc.is_valid(table["celeba_probs"]))
    if "status" in table.column_names:
        keep = pc.and_(keep, pc.equal(table["status"], "ok"))
    rows = table.filter(keep)
    gt = rows["celeba_gt"].combine_chunks().flatten()
    if threshold is None:
        pred = rows["celeba_labels"].combine_chunks().flatten()
    else:
        pred = pc.greater_equal(rows["celeba_probs"].combine_chunks().flatten(), threshold)
    known = pc.and_(pc.is_valid(gt), pc.is_valid(pred)).to_numpy(zero_copy_only=False).reshape(-1, n_attr)
    g = pc.fill_null(gt, False).to_numpy(zero_copy_only=False).reshape(-1, n_attr)
    p = pc.fill_null(pred, False).to_numpy(zero_copy_only=False).reshape(-1, n_attr)
    report = []
    for i, name in enumerate(CELEBA_ATTRIBUTES):
        k = known[:, i]
        n = int(k.sum())
        report.append({
            "attribute": name, "n": n,
            "accuracy": float((g[k, i] == p[k, i]).mean()) if n else None,
            "gt_positive": float(g[k, i].mean()) if n else None,
            "pred_positive": float(p[k, i].mean()) if n else None,
        })
    return report
