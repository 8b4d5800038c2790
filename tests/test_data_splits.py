"""Splits keep near-duplicates together, hold their fractions, and the overlap check finds a planted leak."""

import random

import pytest

from labkit.paths import WORDS_FILE
from labkit.data import split, split_overlap


def rec(text):
    return {"prompt": text, "completion": " x"}


def distinct(n):
    """``n`` records of 12 random words each: no two are near-duplicates."""
    words, rng = WORDS_FILE.read_text().split(), random.Random(0)
    return [rec(" ".join(rng.sample(words, 12))) for _ in range(n)]


def test_near_duplicates_land_in_the_same_split():
    base = [rec(f"Item {i}: the quick brown fox jumps over the lazy dog near river {i} at {i * 37} o'clock")
            for i in range(60)]
    twins = [rec(r["prompt"].replace("quick", "quick,") + " ok") for r in base]
    parts = split(base + twins, seed=3)
    where = {r["prompt"]: name for name, rows in parts.items() for r in rows}
    for a, b in zip(base, twins):
        assert where[a["prompt"]] == where[b["prompt"]]
    assert all(row["near (incl. exact)"] == 0 for row in split_overlap(parts))


@pytest.mark.slow
def test_fractions_hold_roughly_and_seed_changes_assignment():
    records = distinct(2000)
    parts = split(records)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sum(sizes.values()) == 2000
    assert 0.76 < sizes["train"] / 2000 < 0.84 and 0.07 < sizes["test"] / 2000 < 0.13
    other = split(records, seed=1)
    assert other["test"] != parts["test"]
    assert split(records) == parts


def test_overlap_check_finds_a_planted_leak():
    records = distinct(50)
    parts = {"train": records[:40], "test": records[40:] + [records[5], rec(records[7]["prompt"] + "!")]}
    (row,) = split_overlap(parts)
    assert row["exact"] == 1 and row["near (incl. exact)"] == 2


def test_fractions_are_validated():
    with pytest.raises(ValueError, match="sum to 1"):
        split(distinct(3), {"train": 0.5, "test": 0.2})


def test_exact_copies_of_short_records_stay_together_when_near_dedup_skips_them():
    records = distinct(200)
    short = [rec(f"Add the two numbers.\n{i} + {i}") for i in range(50)]
    parts = split(records + short + short, min_chars=1000)  # near-duplicate search skips every record
    for row in split_overlap(parts, min_chars=1000):
        assert row["exact"] == 0 and row["near (incl. exact)"] == 0
    leaky = {"train": short, "test": short[:3]}
    assert split_overlap(leaky, min_chars=1000)[0]["near (incl. exact)"] == 3
