"""A sample's captions in its shard: all caption IDs concatenated (text.npy) and each caption's length
(meta ``caption_token_lengths``). `UnifiedTokenizer.encode_captions` makes the pair; `split_captions`
is its inverse. Numpy only, so training and verify can cut captions without loading a codec."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from uti.errors import DecodeRefused


def split_captions(text: np.ndarray, lengths: Sequence[int], *, what: str,
                   error: type[Exception] = DecodeRefused) -> list[np.ndarray]:
    """A sample's concatenated caption IDs cut back into its captions by its caption_token_lengths;
    lengths that do not add up to the text raise `error`, naming `what`."""
    lengths = [int(n) for n in lengths]
    if any(n < 0 for n in lengths) or sum(lengths) != len(text):
        raise error(f"{what}: caption_token_lengths {lengths} sum to {sum(lengths)}, but the sample has "
                    f"{len(text)} text tokens; the shard is inconsistent, re-tokenize it")
    bounds = np.cumsum([0, *lengths])
    return [np.asarray(text[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
