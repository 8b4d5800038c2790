"""Train/validation/test splits that keep near-duplicates together, and a check for overlap between splits."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

from labkit.data.dedup import clusters, content_hash, near_duplicates
from labkit.data.formats import record_text

DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _unit(text: str) -> float:
    """A number in [0, 1) fixed by ``text``: the same on every machine and in every process."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


def _exact_pairs(texts: Sequence[str]) -> list[tuple[int, int, float]]:
    first: dict[str, int] = {}
    pairs = []
    for j, text in enumerate(texts):
        i = first.setdefault(content_hash(text), j)
        if i != j:
            pairs.append((i, j, 1.0))
    return pairs


def split(records: Sequence[Mapping], fractions: Mapping[str, float] | None = None, *,
          key: Callable[[Mapping], str] = record_text, threshold: float = 0.5, min_chars: int = 0,
          seed: int = 0) -> dict[str, list]:
    """Split ``records`` by a stable hash of their near-duplicate group, so a group never straddles two splits.

    Groups are connected components of exact copies and of pairs with shingle Jaccard >=
    ``threshold`` (see ``labkit.data.dedup.near_duplicates``); a group is placed by the hash of its
    first member's text. Fractions hold in expectation over groups, not exactly.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-9:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    texts = [key(r) for r in records]
    labels = clusters(len(texts), _exact_pairs(texts) + near_duplicates(texts, threshold=threshold, min_chars=min_chars))
    out: dict[str, list] = {name: [] for name in fractions}
    for record, label in zip(records, labels):
        u, edge = _unit(f"{seed}:{content_hash(texts[label])}"), 0.0
        for name, fraction in fractions.items():
            edge += fraction
            if u < edge:
                break
        out[name].append(record)
    return out


def split_overlap(splits: Mapping[str, Sequence[Mapping]], *, key: Callable[[Mapping], str] = record_text,
                  threshold: float = 0.5, min_chars: int = 0) -> list[dict]:
    """For each pair of splits: records of the second that repeat (exactly, or nearly) a record of the first."""
    names = list(splits)
    texts = {name: [key(r) for r in splits[name]] for name in names}
    rows = []
    for a, b in combinations(names, 2):
        hashes_a = {content_hash(t) for t in texts[a]}
        exact = sum(content_hash(t) in hashes_a for t in texts[b])
        both = texts[a] + texts[b]
        n_a = len(texts[a])
        pairs = _exact_pairs(both) + near_duplicates(both, threshold=threshold, min_chars=min_chars)
        near = {j for i, j, _ in pairs if i < n_a <= j}
        rows.append({"pair": f"{a} / {b}", "exact": exact, "near (incl. exact)": len(near), "second split size": len(texts[b])})
    return rows
