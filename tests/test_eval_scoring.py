import random

import pandas as pd
import pytest

from labkit.eval import accuracy_table, bootstrap_interval, exact_match, normalize_answer, wilson_interval


@pytest.mark.parametrize(
    "prediction, reference, ignore_case, same",
    [
        ("85", "85", False, True),
        ("  85\n", "85", False, True),
        ("85.", "85", False, True),
        ("８５", "85", False, True),                      # full-width digits (NFKC)
        ('"tekcos"', "tekcos", False, True),
        ("`urllib.parse`", "urllib.parse", False, True),
        ("array,  binascii,\telse", "array, binascii, else", False, True),
        ("Queue", "queue", False, False),                 # case matters by default ...
        ("Queue", "queue", True, True),                   # ... unless asked
        ("85", "86", False, False),
        ("array, else", "array, binascii, else", False, False),
        ("urllib.parse.", "urllib.parse", False, True),
        ("urllib", "urllib.parse", False, False),
        ("8 5", "85", False, False),                      # inner spaces are not removed
    ],
)
def test_normalisation_table(prediction, reference, ignore_case, same):
    assert (normalize_answer(prediction, ignore_case=ignore_case) == normalize_answer(reference, ignore_case=ignore_case)) is same
    assert exact_match([prediction], [reference], ignore_case=ignore_case) == float(same)


def test_exact_match_averages_and_checks_lengths():
    assert exact_match(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        exact_match(["a", "b", "c"], ["a", "b"])


def test_wilson_interval_known_values():
    # Wilson (1927) interval for 8/10 at 95%: (0.4902, 0.9433), as tabulated by e.g. Newcombe (1998).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


@pytest.mark.parametrize("p, n", [(0.3, 100), (0.05, 60), (0.9, 200)])
def test_wilson_interval_covers_a_known_proportion_about_95_percent_of_the_time(p, n):
    rng = random.Random(1)
    trials = 2000
    covered = 0
    for _ in range(trials):
        k = sum(rng.random() < p for _ in range(n))
        low, high = wilson_interval(k, n)
        covered += low <= p <= high
    assert 0.92 <= covered / trials <= 0.98


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_interval(values, seed=0)
    assert low < 0.3 < high and high - low < 0.25
    assert (low, high) == bootstrap_interval(values, seed=0)


@pytest.mark.parametrize("k, n", [(-1, 5), (6, 5), (0, 0)])
def test_wilson_rejects_impossible_counts(k, n):
    with pytest.raises(ValueError, match="need 0 <= successes <= n"):
        wilson_interval(k, n)


def test_accuracy_table_per_task_and_overall():
    scores = pd.DataFrame({"task": ["add"] * 4 + ["sort"] * 2, "correct": [True, True, False, False, True, True]})
    table = accuracy_table(scores)
    assert list(table.index) == ["add", "sort", "all"]
    assert table.loc["add", "accuracy"] == 0.5 and table.loc["sort", "correct"] == 2
    assert table.loc["all", "n"] == 6 and table.loc["all", "accuracy"] == pytest.approx(4 / 6)
    assert (table.ci_low <= table.accuracy).all() and (table.accuracy <= table.ci_high).all()
