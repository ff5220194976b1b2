"""Prompt sets for CLIP zero-shot attributes (age, gender, the 40 CelebA attributes).

How the prompts are used (``stages/clip_zeroshot.py``): every class is described by one or
more sentences; their CLIP text embeddings are averaged and re-normalised (prompt ensembling),
and an image's class probabilities are the softmax of CLIP's logit scale times the cosine to
each class. So:

* ``AGE_PROMPTS``: five classes, one softmax. The bins are words, not calibrated years.
* ``GENDER_PROMPTS``: two classes (``female``, ``male``), as CelebA's ``Male`` attribute and
  most captioners see it; it is a visual guess about presentation, not a person's identity.
* ``CELEBA_PROMPTS``: per attribute a positive and a negative description, each pair its own
  two-way softmax; the stored probability is that of the positive side. Negatives name the
  visible opposite ("a full head of hair") rather than "not bald", because CLIP's text encoder
  is poor at negation.

The class orders (``AGE_BINS``, ``GENDERS``, ``CELEBA_ATTRIBUTES``) and the rough years each age
word covers (``AGE_RANGES``) live with the columns in ``schemas/attributes.py``; every class
there has an entry here (tests check it).

Subjective CelebA attributes (``Attractive``, ``Oval_Face``, ``Big_Nose`` ...) are kept for
comparability with the dataset; their zero-shot accuracy is low and says little.
"""
from __future__ import annotations

Prompts = tuple[str, ...]
"""The sentences describing one class; their embeddings are averaged."""

AGE_PROMPTS: dict[str, Prompts] = {
    "child": ("a photo of a child", "a close-up photo of the face of a young child"),
    "teenager": ("a photo of a teenager", "a close-up photo of the face of a teenager"),
    "young_adult": ("a photo of a young adult", "a close-up photo of the face of a person in their twenties"),
    "middle_aged": ("a photo of a middle-aged person", "a close-up photo of the face of a person in their forties"),
    "elderly": ("a photo of an elderly person", "a close-up photo of the face of an old person"),
}

GENDER_PROMPTS: dict[str, Prompts] = {
    "female": ("a photo of a woman", "a close-up photo of a woman's face"),
    "male": ("a photo of a man", "a close-up photo of a man's face"),
}

# attribute -> (positive prompts, negative prompts)
CELEBA_PROMPTS: dict[str, tuple[Prompts, Prompts]] = {
    "5_o_Clock_Shadow": (("a photo of a person with light stubble on the face",),
                         ("a photo of a person with a smooth, clean-shaven face",)),
    "Arched_Eyebrows": (("a photo of a person with arched eyebrows",),
                        ("a photo of a person with straight, flat eyebrows",)),
    "Attractive": (("a photo of an attractive person",), ("a photo of a plain-looking person",)),
    "Bags_Under_Eyes": (("a photo of a person with bags under the eyes",),
                        ("a photo of a person with smooth skin under the eyes",)),
    "Bald": (("a photo of a bald person",), ("a photo of a person with a full head of hair",)),
    "Bangs": (("a photo of a person with bangs covering the forehead",),
              ("a photo of a person with an uncovered forehead",)),
    "Big_Lips": (("a photo of a person with full, big lips",), ("a photo of a person with thin lips",)),
    "Big_Nose": (("a photo of a person with a big nose",), ("a photo of a person with a small nose",)),
    "Black_Hair": (("a photo of a person with black hair",), ("a photo of a person with light-colored hair",)),
    "Blond_Hair": (("a photo of a person with blond hair",), ("a photo of a person with dark hair",)),
    "Blurry": (("a blurry photo of a person",), ("a sharp, in-focus photo of a person",)),
    "Brown_Hair": (("a photo of a person with brown hair",), ("a photo of a person with black or blond hair",)),
    "Bushy_Eyebrows": (("a photo of a person with bushy, thick eyebrows",),
                       ("a photo of a person with thin eyebrows",)),
    "Chubby": (("a photo of a chubby person with a round face",), ("a photo of a slim person with a lean face",)),
    "Double_Chin": (("a photo of a person with a double chin",), ("a photo of a person with a defined jawline",)),
    "Eyeglasses": (("a photo of a person wearing eyeglasses",), ("a photo of a person without glasses",)),
    "Goatee": (("a photo of a person with a goatee",), ("a photo of a person with a bare chin",)),
    "Gray_Hair": (("a photo of a person with gray hair",), ("a photo of a person with colored, non-gray hair",)),
    "Heavy_Makeup": (("a photo of a person wearing heavy makeup",), ("a photo of a person with a bare face, no makeup",)),
    "High_Cheekbones": (("a photo of a person with high cheekbones",), ("a photo of a person with flat cheeks",)),
    "Male": (("a photo of a man",), ("a photo of a woman",)),
    "Mouth_Slightly_Open": (("a photo of a person with the mouth slightly open",),
                            ("a photo of a person with the mouth closed",)),
    "Mustache": (("a photo of a person with a mustache",), ("a photo of a person with a bare upper lip",)),
    "Narrow_Eyes": (("a photo of a person with narrow eyes",), ("a photo of a person with wide open eyes",)),
    "No_Beard": (("a photo of a person with no beard",), ("a photo of a person with a beard",)),
    "Oval_Face": (("a photo of a person with an oval face",), ("a photo of a person with a square or round face",)),
    "Pale_Skin": (("a photo of a person with pale skin",), ("a photo of a person with tanned or dark skin",)),
    "Pointy_Nose": (("a photo of a person with a pointy nose",), ("a photo of a person with a rounded nose",)),
    "Receding_Hairline": (("a photo of a person with a receding hairline",),
                          ("a photo of a person with a full hairline",)),
    "Rosy_Cheeks": (("a photo of a person with rosy cheeks",), ("a photo of a person with an even skin tone",)),
    "Sideburns": (("a photo of a person with long sideburns",), ("a photo of a person without sideburns",)),
    "Smiling": (("a photo of a smiling person",), ("a photo of a person who is not smiling",)),
    "Straight_Hair": (("a photo of a person with straight hair",), ("a photo of a person with curly hair",)),
    "Wavy_Hair": (("a photo of a person with wavy hair",), ("a photo of a person with straight hair",)),
    "Wearing_Earrings": (("a photo of a person wearing earrings",), ("a photo of a person with bare earlobes",)),
    "Wearing_Hat": (("a photo of a person wearing a hat",), ("a photo of a person with an uncovered head",)),
    "Wearing_Lipstick": (("a photo of a person wearing lipstick",), ("a photo of a person with natural lips",)),
    "Wearing_Necklace": (("a photo of a person wearing a necklace",), ("a photo of a person with a bare neck",)),
    "Wearing_Necktie": (("a photo of a person wearing a necktie",), ("a photo of a person without a tie",)),
    "Young": (("a photo of a young person",), ("a photo of an old person",)),
}
