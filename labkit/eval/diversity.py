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


_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])")


def words(text: str) -> list[str]:
    """Lower-cased alphabetic words of 2+ letters; identifiers split at underscores and case changes."""
    return [w.lower() for w in _WORD.findall(text) if len(w) >= 2]


def word_vocabulary(texts: Iterable[str]) -> set[str]:
    """Every word (as ``words`` splits them) that occurs in ``texts``."""
    return {w for text in texts for w in words(text)}


def known_word_ratio(text: str, vocabulary: Iterable[str]) -> float:
    """Fraction of the alphabetic words (2+ letters, split at case/underscore) of ``text`` found in ``vocabulary``.

    ``read_config`` counts as ``read`` and ``config``; a model that writes real identifiers scores high,
    and a text with no word at all (a loop of digits, say) scores 0.
    """
    vocabulary = {w.lower() for w in vocabulary}
    found = words(text)
    if not found:  # a loop of digits or newlines wrote no real word
        return 0.0
    return sum(w in vocabulary for w in found) / len(found)
