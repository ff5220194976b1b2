"""Training prompts from a sample's labels: PortraitBooth's emotion words and man/woman identity token.

PortraitBooth (Sec. 5.1, Table 5) trains on prompts whose identity token is "man" or "woman" and
that name the expression with one of 11 emotion words. The pipeline's labels feed both:

* emotion: the ``attributes`` stage's FER2013 class, used only where ``emotion_confident`` is true
  (a row without that column counts as not confident). ``PAPER_EMOTION_WORDS`` maps each of the 11
  words to the FER2013 class it names; ``neutral`` names no word;
* gender: the ``attributes`` stage's ``gender_label`` (CLIP zero-shot, already thresholded by the
  stage's ``gender_threshold``), else the caption's own subject word when it is gendered, else
  "person". ``GenderToken.source`` says which.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from schemas.attributes import EMOTION_SYNONYMS, EMOTIONS

# The paper names "happy, angry, sad, etc." and counts 11; these are 11 words a caption or prompt
# uses for the six non-neutral FER2013 classes (the first word of a class is its prompt word).
PAPER_EMOTION_WORDS: dict[str, str] = {
    "happy": "happy", "smiling": "happy", "laughing": "happy",
    "angry": "angry",
    "sad": "sad", "crying": "sad",
    "surprised": "surprise", "shocked": "surprise",
    "fearful": "fear", "scared": "fear",
    "disgusted": "disgust",
}
assert len(PAPER_EMOTION_WORDS) == 11 and set(PAPER_EMOTION_WORDS.values()) == set(EMOTIONS) - {"neutral"}
EMOTION_VOCABULARIES: dict[str, dict[str, str]] = {"paper": PAPER_EMOTION_WORDS, "synonyms": EMOTION_SYNONYMS}

MAN, WOMAN, PERSON = "man", "woman", "person"
GENDER_LABELS = {"male": MAN, "female": WOMAN}
CAPTION_GENDER = {w: MAN for w in ("man", "men", "boy", "guy", "gentleman", "male", "he")} | \
    {w: WOMAN for w in ("woman", "women", "girl", "lady", "female", "she")}
SOURCE_ATTRIBUTES, SOURCE_CAPTION, SOURCE_NONE = "attributes.gender_label", "caption", "none"

# CelebA attributes (CLIP zero-shot) worth a phrase in a caption-less prompt
ATTRIBUTE_PHRASES: dict[str, str] = {
    "Eyeglasses": "wearing glasses", "Wearing_Hat": "wearing a hat", "Black_Hair": "with black hair",
    "Blond_Hair": "with blond hair", "Brown_Hair": "with brown hair", "Gray_Hair": "with gray hair",
    "Mustache": "with a mustache", "Goatee": "with a goatee",
}


def prompt_word(emotion_class: str, vocabulary: str = "paper") -> str | None:
    """The word a prompt uses for a FER2013 class (None for neutral/uncertain)."""
    for word, cls in EMOTION_VOCABULARIES[vocabulary].items():
        if cls == emotion_class:
            return word
    return None


def confident_emotion(attributes: dict | None) -> str | None:
    """The attributes row's emotion class where ``emotion_confident`` is true, else None."""
    if not attributes or attributes.get("emotion_confident") is not True:
        return None
    label = attributes.get("emotion")
    return label if label in EMOTIONS and label != "neutral" else None


@dataclass(frozen=True)
class GenderToken:
    """The identity token of one sample and where it came from."""

    word: str  # man | woman | person
    source: str  # SOURCE_ATTRIBUTES | SOURCE_CAPTION | SOURCE_NONE


def gender_token(attributes: dict | None, subject_word: str = "") -> GenderToken:
    """man/woman from the attributes stage's gender label, else from a gendered caption subject word."""
    label = (attributes or {}).get("gender_label")
    if label in GENDER_LABELS:
        return GenderToken(GENDER_LABELS[label], SOURCE_ATTRIBUTES)
    if subject_word.lower() in CAPTION_GENDER:
        return GenderToken(CAPTION_GENDER[subject_word.lower()], SOURCE_CAPTION)
    return GenderToken(PERSON, SOURCE_NONE)


def names_emotion(text: str, vocabulary: str = "paper") -> bool:
    words = EMOTION_VOCABULARIES[vocabulary]
    return any(w.lower() in words for w in re.findall(r"[A-Za-z]+", text))


def insert_before(text: str, span: tuple[int, int], word: str) -> tuple[str, tuple[int, int]]:
    """``word`` before the subject at ``span`` with the article fixed ("a man" -> "an angry man")."""
    s, e = span
    head = text[:s]
    article = re.search(r"\b([Aa]n?) $", head)
    if article:
        wanted = "an" if word[:1].lower() in "aeiou" else "a"
        wanted = wanted.capitalize() if article.group(1)[0] == "A" else wanted
        head = head[:article.start(1)] + wanted + " "
    new = f"{head}{word} {text[s:]}"
    shift = len(new) - len(text)
    return new, (s + shift, e + shift)


def label_prompt(token: str, emotion: str | None, attributes: dict | None, rng: random.Random,
                 vocabulary: str = "paper", max_phrases: int = 2) -> tuple[str, tuple[int, int]]:
    """A caption-less sample's prompt from its labels: "a photo of a happy woman wearing glasses".

    Returns the prompt and the identity token's [start, end) span.
    """
    word = prompt_word(emotion, vocabulary) if emotion else None
    adjective = f"{word} " if word else ""
    article = "an" if (adjective or token)[:1] in "aeiou" else "a"
    head = f"a photo of {article} {adjective}"
    phrases = []
    labels = (attributes or {}).get("celeba_labels")
    if labels:
        from schemas.attributes import CELEBA_ATTRIBUTES

        on = {name for name, v in zip(CELEBA_ATTRIBUTES, labels) if v}
        phrases = [p for name, p in ATTRIBUTE_PHRASES.items() if name in on]
        rng.shuffle(phrases)
    tail = "".join(f" {p}" for p in phrases[:max_phrases])
    return head + token + tail, (len(head), len(head) + len(token))
