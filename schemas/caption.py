"""Columns of the ``caption`` manifest, and the word lists its text cleaning relies on.

Per sample: every candidate caption (all captioners, beam and sampled), cleaned and raw, with
its CLIP image-text cosine and where it came from; then the kept top-k (best first, distinct
cleaned texts scoring at least ``min_score``) with the class word for the person located in
each, so a trainer can insert an identity token at ``caption[start:end]`` without string hacks.
A candidate that cleans to an empty string is not scored (null score). ``captions`` may be empty
when no candidate reaches ``min_score``; the row is still ``ok``.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("captions", pa.list_(pa.string())),  # kept top-k cleaned captions, best first
        pa.field("caption_scores", pa.list_(pa.float32())),  # their CLIP cosine, same order
        pa.field("caption_raw", pa.list_(pa.string())),  # raw captioner text of each kept caption
        pa.field("subject_words", pa.list_(pa.string())),  # class word as written, "" when none
        pa.field("subject_spans", pa.list_(pa.list_(pa.int32()))),  # [start, end) in the caption, [-1, -1] when none
        pa.field("candidates", pa.list_(pa.string())),  # every candidate, cleaned ("" when nothing is left)
        pa.field("candidate_raw", pa.list_(pa.string())),  # every candidate as the captioner wrote it
        pa.field("candidate_scores", pa.list_(pa.float32())),  # CLIP cosine of the cleaned text, null when empty
        pa.field("candidate_sources", pa.list_(pa.string())),  # "<captioner>:beam" or "<captioner>:sample"
        pa.field("clip_model", pa.string()),  # the scoring CLIP: HF id or local directory
    ]
)

NO_SPAN = (-1, -1)

# Words naming the person, singular then plural; plurals and possessives ("man's", "men's")
# are matched as whole words. Earlier in the caption wins, not earlier in this list.
SUBJECT_WORDS: tuple[str, ...] = (
    "man", "woman", "boy", "girl", "person", "lady", "guy", "child", "kid", "gentleman",
    "teenager", "teen", "baby", "toddler",
    "men", "women", "boys", "girls", "people", "persons", "ladies", "guys", "children", "kids",
    "gentlemen", "teenagers", "teens", "babies", "toddlers",
)
# Role nouns (and the adjectives male/female, often used as nouns) that name the pictured
# person when no class word is present.
ROLE_WORDS: tuple[str, ...] = (
    "male", "female", "adult",
    "actor", "actress", "player", "athlete", "soldier", "officer", "policeman", "policewoman",
    "businessman", "businesswoman", "politician", "singer", "musician", "model", "bride", "groom",
    "doctor", "nurse", "chef", "student", "priest", "referee", "coach", "wrestler", "boxer",
    "golfer", "skier", "surfer", "skateboarder", "spokesman", "spokeswoman", "chairman",
    "congressman", "senator", "president", "king", "queen", "prince", "princess",
)
PLURAL_SUBJECTS = frozenset(SUBJECT_WORDS[SUBJECT_WORDS.index("men"):])
DEFAULT_SUBJECT = "person"
"""Word that replaces a removed name when the caption names no class word elsewhere."""

# BLIP's well-known nonsense adjective ("arafed man ...") in its spellings seen in the wild;
# ARTIFACT_PATTERN catches further variants of the same stem.
ARTIFACT_WORDS: tuple[str, ...] = (
    "arafed", "araffe", "arafe", "arrafed", "araffed", "arafee", "araf", "arraffe",
    "arafes", "araffes", "arafeds", "arraf", "araffy", "arafy",
)
ARTIFACT_PATTERN = r"a+r+a+f+(?:e+d?|ed|y|ie)?s?"
# Tokenizer leftovers: BERT's [unusedN]/[UNK]/... and GPT/T5 style tags.
TOKEN_PATTERN = r"\[(?:unused\d+|unk|pad|cls|sep|mask|dec|enc)\]|<\|?(?:endoftext|startoftext|pad|unk|s|/s)\|?>"
# Captioner filler at the start ("there is a man ..." -> "a man ...").
LEADING_FILLERS: tuple[str, ...] = ("there is", "there are", "there's", "this is")
