"""Measures of generated text that need no reference: repetition and vocabulary."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence


def distinct_ngram_ratio(ids: Sequence[int], n: int = 2) -> float:
    """Distinct n-grams / total n-grams of a sequence: 1.0 never repeats, near 0 is a loop."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        raise ValueError(f"sequence of {len(ids)} tokens has no {n}-gram")
    return len(set(grams)) / len(grams)


def known_word_ratio(text: str, vocabulary: Iterable[str]) -> float:
    """Fraction of the alphabetic words (2+ letters, split at case/underscore) of ``text`` found in ``vocabulary``.

    ``read_config`` counts as ``read`` and ``config``; a model that writes real identifiers scores high.
    """
    vocabulary = {w.lower() for w in vocabulary}
    words = [w.lower() for w in re.findall(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])", text) if len(w) >= 2]
    if not words:
        raise ValueError(f"no word in {text[:60]!r}")
    return sum(w in vocabulary for w in words) / len(words)
