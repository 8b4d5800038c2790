"""Exact dedup by a stable content hash, near-dedup by MinHash/LSH (``datasketch``), both identical in every process.

Python's ``hash()`` of a string is salted per process (``PYTHONHASHSEED``), so a dedup or split
keyed on it changes from run to run; SHA-256 and datasketch's SHA-1-based MinHash do not.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence

from labkit.data.formats import record_text
from labkit.data.report import StepReport

NUM_PERM = 128
"""MinHash permutations: the Jaccard estimate's standard error is about 1/sqrt(NUM_PERM) = 0.09."""


def content_hash(text: str) -> str:
    """SHA-256 hex digest of ``text`` (UTF-8; lone surrogates kept, so broken text still hashes)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def dedup_exact(records: Sequence[Mapping], key: Callable[[Mapping], str] = record_text) -> tuple[list[Mapping], StepReport]:
    """Keep the first record of each distinct ``key(record)``; the report names the record each duplicate repeats."""
    first: dict[str, int] = {}
    kept, report = [], StepReport("dedup_exact", len(records))
    for i, record in enumerate(records):
        h = content_hash(key(record))
        if h in first:
            report.removed.append((i, f"exact duplicate: of record {first[h]}"))
        else:
            first[h] = i
            kept.append(record)
    return kept, report


def shingles(text: str, n: int = 5) -> set[str]:
    """Character ``n``-grams of the lower-cased text with whitespace runs collapsed: robust to small edits."""
    text = re.sub(r"\s+", " ", text.lower()).strip()
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _minhash(grams: set[str], num_perm: int, seed: int):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed)
    m.update_batch([g.encode("utf-8", "surrogatepass") for g in sorted(grams)])
    return m


def near_duplicates(texts: Sequence[str], *, threshold: float = 0.5, num_perm: int = NUM_PERM, ngram: int = 5,
                    seed: int = 1, min_chars: int = 0) -> list[tuple[int, int, float]]:
    """Every pair (i, j, Jaccard) with i < j whose shingle Jaccard similarity is at least ``threshold``.

    Texts shorter than ``min_chars`` are left out: in short templated records the shared template
    dominates the shingles, so two different questions look alike (exact dedup still sees them).

    MinHash/LSH proposes candidate pairs in near-linear time; each candidate is then verified with
    the exact Jaccard of its shingle sets, so LSH costs recall (a pair it never proposes) but not
    precision.
    """
    from datasketch import MinHashLSH

    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    grams = [shingles(t, ngram) for t in texts]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs = []
    for j, g in enumerate(grams):
        if len(texts[j]) < min_chars:
            continue
        m = _minhash(g, num_perm, seed)
        for i in sorted(lsh.query(m)):
            sim = jaccard(grams[i], g)
            if sim >= threshold:
                pairs.append((i, j, sim))
        lsh.insert(j, m)
    return pairs


def clusters(n: int, pairs: Sequence[tuple[int, int, float]]) -> list[int]:
    """Connected components of ``pairs`` over ``n`` items; each item's label is the smallest index in its component."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)
    return [root(x) for x in range(n)]


def dedup_near(records: Sequence[Mapping], key: Callable[[Mapping], str] = record_text, *, threshold: float = 0.5,
               num_perm: int = NUM_PERM, ngram: int = 5, seed: int = 1, min_chars: int = 0) -> tuple[list[Mapping], StepReport]:
    """Drop every record whose text is a near duplicate (shingle Jaccard >= ``threshold``) of an earlier kept one.

    Options as for ``near_duplicates``; the report names, for each record dropped, the kept record it resembles.
    """
    pairs = near_duplicates([key(r) for r in records], threshold=threshold, num_perm=num_perm, ngram=ngram, seed=seed,
                            min_chars=min_chars)
    matches: dict[int, list[tuple[int, float]]] = {}
    for i, j, sim in pairs:
        matches.setdefault(j, []).append((i, sim))
    report, dropped = StepReport("dedup_near", len(records)), set()
    for j in range(len(records)):
        earlier = [(i, s) for i, s in matches.get(j, []) if i not in dropped]
        if earlier:
            i, sim = max(earlier, key=lambda x: (x[1], -x[0]))
            report.removed.append((j, f"near duplicate: of record {i} (Jaccard {sim:.2f})"))
            dropped.add(j)
    return [r for j, r in enumerate(records) if j not in dropped], report
