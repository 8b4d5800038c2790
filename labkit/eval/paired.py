"""Paired comparisons of systems scored on the same prompts: McNemar's exact test and a paired bootstrap.

Two systems answering the same prompts are not independent samples: most prompts are easy or hard
for both. Comparing their separate intervals ("do they overlap?") ignores that pairing and is both
too strict and the wrong question. The paired tests look only at what differs prompt by prompt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import pandas as pd

from labkit.eval.scoring import bootstrap_interval


def _as_bools(name: str, values: Sequence) -> list[bool]:
    out = [bool(v) for v in values]
    if not out:
        raise ValueError(f"{name} has no scored prompts")
    return out


def discordant_counts(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int]:
    """(prompts only ``a`` got right, prompts only ``b`` got right)."""
    a, b = _as_bools("a", a), _as_bools("b", b)
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same prompts: {len(a)} vs {len(b)} results")
    return sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided p-value of McNemar's exact test that ``a`` and ``b`` are equally accurate.

    Under the null hypothesis each discordant prompt (one right, one wrong) favours either system with
    probability 1/2, so the smaller discordant count is Binomial(discordant, 1/2) (McNemar 1947; exact form).
    """
    only_a, only_b = discordant_counts(a, b)
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], *, confidence: float = 0.95, resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy(a) - accuracy(b), resampling prompts (both systems together)."""
    discordant_counts(a, b)  # validates
    diffs = [float(x) - float(y) for x, y in zip(_as_bools("a", a), _as_bools("b", b))]
    return bootstrap_interval(diffs, confidence=confidence, resamples=resamples, seed=seed)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979): family-wise error stays at alpha over all comparisons."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_comparison(
    correct: Mapping[str, Sequence[bool]],
    *,
    reference: str | None = None,
    alpha: float = 0.05,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Every pair of systems (or each against ``reference``): accuracy difference with a paired bootstrap
    interval, the discordant counts, McNemar's exact p-value and its Holm adjustment over the table.

    ``correct`` maps a system's name to its per-prompt correctness, all on the same prompts in the same order.
    ``verdict`` reads the Holm-adjusted p-value at ``alpha``: which system is better, or that the two
    cannot be told apart with this many prompts.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    names = list(correct)
    if reference is not None and reference not in correct:
        raise ValueError(f"reference {reference!r} is not one of {names}")
    pairs = [(n, reference) for n in names if n != reference] if reference else list(combinations(names, 2))
    if not pairs:
        raise ValueError(f"need at least two systems to compare, got {names}")
    rows = []
    for a, b in pairs:
        only_a, only_b = discordant_counts(correct[a], correct[b])
        n = len(correct[a])
        low, high = paired_bootstrap(correct[a], correct[b], confidence=confidence, seed=seed)
        rows.append({"a": a, "b": b, "n": n, "accuracy a": sum(map(bool, correct[a])) / n,
                     "accuracy b": sum(map(bool, correct[b])) / n, "difference": (only_a - only_b) / n,
                     "ci_low": low, "ci_high": high, "only a": only_a, "only b": only_b,
                     "p": mcnemar_exact(correct[a], correct[b])})
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(table["p"].tolist())
    table["verdict"] = [
        (f"{r.a} better" if r.difference > 0 else f"{r.b} better") if r["p (Holm)"] < alpha
        else f"cannot tell apart at n = {r.n}" for _, r in table.iterrows()]
    return table
