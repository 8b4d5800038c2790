"""The chapter's messy dataset is deterministic and its truth matches what the validators find."""

from collections import Counter

import pytest

from labkit.data import find_errors
from labkit.data.raw import BROKEN_KINDS, audit, messy_dataset


@pytest.fixture(scope="module")
def messy():
    return messy_dataset(20)


def test_same_seed_same_data(messy):
    assert messy_dataset(20) == messy
    assert messy_dataset(20, seed=1)[0] != messy[0]


def test_validation_flags_exactly_the_broken_records(messy):
    records, truth = messy
    flagged = {e[0] for e in find_errors(records, "chat")}
    broken = {i for i, t in enumerate(truth) if t.defect.startswith("broken")}
    assert flagged == broken
    assert Counter(t.defect for t in truth if t.defect.startswith("broken")) == {f"broken:{k}": 2 for k in BROKEN_KINDS}


def test_audit_counts_duplicates_and_losses(messy):
    records, truth = messy
    everything = audit(truth, list(range(len(records))))
    n_copies = sum(t.defect in ("exact-dup", "cosmetic-dup", "near-dup") for t in truth)
    assert everything["duplicates left"] == n_copies > 0
    assert everything["clean origins lost"] == 0
    only_clean = [i for i, t in enumerate(truth) if t.defect == "clean"]
    assert audit(truth, only_clean) == {"kept": len(only_clean), "duplicates left": 0, "clean origins lost": 0,
                                        "defects left": 0}
