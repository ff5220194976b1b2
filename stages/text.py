"""Caption text: cleaning captioner output and locating the word that names the person.

Pure Python (``re`` only). ``clean`` turns raw captioner text into a caption a trainer can use:
tokenizer leftovers (``[unused0]``, ``##`` pieces) and BLIP's nonsense word ("arafed" and its
spellings) go, filler ("there is a man that is standing") is shortened, repeated words and
phrases are collapsed, articles agree, whitespace and punctuation are normalised and, on
request, person names are replaced by the class word. ``find_subject`` returns the class word
("man", "women", ...) and its ``[start, end)`` span in the cleaned caption.

Name rule (``remove_names``): a listed name (case-insensitive, ``_`` read as a space), or a
run of two or more capitalised words, less leading sentence starters ("The", "A", "Two") that
are capitalised only because they open the sentence, and not after "the/at/in/from" (places:
"at the White House"). Single capitalised words are left alone: too many are places or brands
("a man in a Nike shirt"). BLIP writes lowercase, so for it only the list matters; the stage
adds the sample's identity when it reads like a name.
"""
from __future__ import annotations

import re
from typing import Iterable

from schemas import caption as cs

_TOKENS = re.compile(rf"\s*(?:{cs.TOKEN_PATTERN})\s*", re.I)
_ARTIFACT = rf"(?:{cs.ARTIFACT_PATTERN}|{'|'.join(map(re.escape, cs.ARTIFACT_WORDS))})"
_ART_AFTER_ARTICLE = re.compile(rf"\b(a|an|the)\s+{_ARTIFACT}\b\s*", re.I)
_ART_LEADING = re.compile(rf"^\s*{_ARTIFACT}\b\s*", re.I)
_ART_ANY = re.compile(rf"\s*\b{_ARTIFACT}\b", re.I)
_FILLER = re.compile(rf"^\s*(?:{'|'.join(map(re.escape, cs.LEADING_FILLERS))})\s+", re.I)
_REL_CLAUSE = re.compile(r"\b(?:that|who|which)\s+(?:is|are)\s+(?=\w+ing\b)", re.I)
_REPEAT = re.compile(r"\b((?:\w+\s+){0,2}?\w+)(?:\s+(?:and\s+)?\1\b)+", re.I)
_A_AN = re.compile(r"\b([Aa])\s+(?=[aeioAEIO]\w)")
_AN_A = re.compile(r"\b([Aa])n\s+(?=[b-df-hj-np-tv-zB-DF-HJ-NP-TV-Z])(?!hour|honest|honor|honour|heir)")
_DANGLING = {"a", "an", "the", "and", "with", "of", "in", "on", "at", "to", "for", "or", "his", "her",
             "its", "their", "is", "are", "that", "while", "from", "by", "as"}
_DETERMINERS = {"a", "an", "the", "this", "that", "his", "her", "their", "its", "my", "your", "our", "one"}
_STARTERS = sorted(_DETERMINERS | {"there", "these", "those", "two", "three", "some", "close", "portrait"})
_CAPITALISED_RUN = re.compile(r"\b[A-Z][a-z'\-]+(?:\s+(?:[A-Z]\.?\s+)?[A-Z][a-z'\-]+)+")


def _words(words: Iterable[str]) -> re.Pattern:
    alternatives = "|".join(sorted(map(re.escape, words), key=len, reverse=True))
    # hyphens are word characters here: "man-made" does not name a man
    return re.compile(rf"(?<![\w-])({alternatives})(?![\w-])", re.I)


_SUBJECT = _words(cs.SUBJECT_WORDS)
_ROLE = _words(cs.ROLE_WORDS)


def strip_tokens(text: str) -> str:
    """Drop tokenizer leftovers: [unusedN], [UNK], <|endoftext|>, and ``##`` word pieces."""
    text = _TOKENS.sub(" ", text)
    text = re.sub(r"(?<=\w)\s*##(?=\w)", "", text)  # "walk ##ing" -> "walking"
    return re.sub(r"(?:^|\s)##\w*", " ", text)  # a piece with nothing to attach to


def remove_artifacts(text: str) -> str:
    """"arafed man" -> "a man", "the araffe woman" -> "the woman", "two arafed men" -> "two men"."""
    text = _ART_AFTER_ARTICLE.sub(lambda m: m.group(1) + " ", text)
    lead = _ART_LEADING.match(text)
    if lead:
        rest = text[lead.end():]
        first = re.sub(r"'s$", "", rest.split(" ", 1)[0].lower())
        plural = first in cs.PLURAL_SUBJECTS or first in _DETERMINERS or first.isdigit()
        text = rest if plural or not rest else "a " + rest
    return _ART_ANY.sub("", text)


def shorten_filler(text: str) -> str:
    """"there is a man that is standing" -> "a man standing"."""
    text = _FILLER.sub("", text)
    return _REL_CLAUSE.sub("", text)


def collapse_repeats(text: str) -> str:
    """"a man man" -> "a man", "with a hat with a hat" -> "with a hat"."""
    previous = None
    while previous != text:
        previous, text = text, _REPEAT.sub(r"\1", text)
    return text


def fix_articles(text: str) -> str:
    """"a elderly man" -> "an elderly man", "an man" -> "a man" (u-words left alone)."""
    text = _A_AN.sub(lambda m: m.group(1) + "n ", text)
    return _AN_A.sub(lambda m: m.group(1) + " ", text)


def normalise(text: str) -> str:
    """Whitespace, punctuation spacing, dangling trailing words, lowercase first letter."""
    text = re.sub(r"(?<=\w)\s*'\s*(?=s\b|t\b|re\b|ve\b|ll\b|d\b|m\b)", "'", text)  # "man ' s" -> "man's"
    text = re.sub(r"\s+([,.!?;:])", r"\1", text)
    text = re.sub(r"([,.!?;:])\1+", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip(" \t\n,.;:-!?'\"")
    words = text.split(" ")
    while words and words[-1].lower() in _DANGLING:
        words.pop()
    text = " ".join(words).rstrip(" ,;:-")
    if text and not (len(text) > 1 and text[1].isupper()):
        text = text[0].lower() + text[1:]
    return text


def names_from_identity(identity: str) -> list[str]:
    """A person name from an identity label ("Colin_Powell" -> ["Colin Powell"]); [] for ids."""
    words = re.split(r"[_\s]+", identity.strip())
    if len(words) < 2 or not all(w.isalpha() or re.fullmatch(r"[A-Za-z][A-Za-z.'-]*", w) for w in words):
        return []
    return [" ".join(words)]


def _name_patterns(names: Iterable[str]) -> list[re.Pattern]:
    patterns = []
    for name in names:
        words = [w for w in re.split(r"[_\s]+", name.strip()) if w]
        for variant in {tuple(words), tuple(w for w in words if len(w.rstrip(".")) > 1)}:
            if variant:
                body = r"\s+".join(map(re.escape, variant))
                patterns.append(re.compile(rf"(?<![\w-]){body}(?![\w-])", re.I))
    return sorted(patterns, key=lambda p: len(p.pattern), reverse=True)


def _capitalised_runs(text: str) -> list[tuple[int, int]]:
    """Spans of 2+ capitalised words that look like a name (see the module docstring)."""
    spans = []
    for match in _CAPITALISED_RUN.finditer(text):
        start, run = match.start(), match.group(0)
        lead = re.match(r"(?:(?:%s)\s+)+" % "|".join(_STARTERS), run, re.I)
        if lead:  # "The White House", "A Man ...": sentence-initial capitals, not a name
            start, run = start + lead.end(), run[lead.end():]
        before = text[:start].split()
        if len(run.split()) < 2 or (before and before[-1].lower() in ("the", "at", "in", "from")):
            continue
        spans.append((start, match.end()))
    return spans


def remove_person_names(text: str, names: Iterable[str] = ()) -> str:
    """Replace listed names and capitalised runs by the caption's class word ("a man")."""
    spans = [m.span() for p in _name_patterns(names) for m in p.finditer(text)]
    spans += _capitalised_runs(text)
    if not spans:
        return text
    spans = _merge(spans)
    bounds = [0] + [i for span in spans for i in span] + [len(text)]
    rest = " ".join(text[bounds[i]:bounds[i + 1]] for i in range(0, len(bounds), 2))
    word, _, _ = find_subject(rest)
    word = word.lower() if word and word.lower() not in cs.PLURAL_SUBJECTS else cs.DEFAULT_SUBJECT
    out, last = [], 0
    for start, end in spans:
        before = text[last:start]
        previous = before.split()[-1].lower() if before.split() else ""
        article = "" if previous in _DETERMINERS else "a "
        out += [before, article + word]
        last = end
    return "".join(out) + text[last:]


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def clean(raw: str, remove_names: bool = False, names: Iterable[str] = ()) -> str:
    """The cleaned caption of raw captioner text ('' when nothing meaningful is left)."""
    text = strip_tokens(raw)
    text = re.sub(r"\s+", " ", text).strip()
    if remove_names:  # before lowercasing: the capitalisation rule needs the case
        text = remove_person_names(text, names)
    text = remove_artifacts(text)
    text = shorten_filler(text)
    text = collapse_repeats(text)
    text = fix_articles(text)
    text = normalise(text)
    return text if re.search(r"[A-Za-z]", text) else ""


def find_subject(text: str) -> tuple[str, int, int]:
    """First class word naming the person (role words as fallback): (word as written, start, end)."""
    for pattern in (_SUBJECT, _ROLE):
        match = pattern.search(text)
        if match:
            return match.group(1), match.start(1), match.end(1)
    return "", *cs.NO_SPAN
