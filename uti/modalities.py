"""The modality names, defined once.

`MODALITIES` is the order everything iterates in unless an order is fixed by bytes or IDs. It is
alphabetical, and it is itself part of the training data order: train.stream seeds each stream's shard
permutation and buffer draws with a modality's index in it, so a reorder would change which samples
a seeded run sees. Error messages list the allowed names in it.

`TOKEN_SPACE_ORDER` is the order the token space lays its ID ranges out in (TokenSpace.build: text,
then image, then the audio levels, after the specials). Reordering it would move every ID; the config's
`modalities` and `uti tokenspace build`'s notes follow it so they read in the order of the ranges.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("audio", "image", "text")
TOKEN_SPACE_ORDER: tuple[str, ...] = ("text", "image", "audio")
# The modalities whose samples carry media tokens and a source file (text rows have neither).
MEDIA_MODALITIES: tuple[str, ...] = tuple(m for m in MODALITIES if m != "text")

__all__ = ["MEDIA_MODALITIES", "MODALITIES", "TOKEN_SPACE_ORDER"]
