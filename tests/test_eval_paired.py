import math
import random

import pytest

from labkit.eval import holm, mcnemar_exact, paired_bootstrap, paired_comparison
from labkit.eval.paired import discordant_counts


def draw(n: int, accuracy: float, rng: random.Random) -> list[bool]:
    return [rng.random() < accuracy for _ in range(n)]


@pytest.mark.parametrize("only_a, only_b, expected", [
    (0, 0, 1.0),
    (5, 5, 1.0),
    (10, 0, 2 / 2**10),                                              # the most lopsided split of 10
    (8, 2, 2 * sum(math.comb(10, k) for k in range(3)) / 2**10),     # 0.109375
    (2, 8, 2 * sum(math.comb(10, k) for k in range(3)) / 2**10),     # symmetric
])
def test_mcnemar_exact_is_the_two_sided_binomial_tail_of_the_discordant_prompts(only_a, only_b, expected):
    both_right, both_wrong = 7, 4  # concordant prompts carry no information
    a = [True] * only_a + [False] * only_b + [True] * both_right + [False] * both_wrong
    b = [False] * only_a + [True] * only_b + [True] * both_right + [False] * both_wrong
    assert discordant_counts(a, b) == (only_a, only_b)
    assert mcnemar_exact(a, b) == pytest.approx(expected)


def test_a_planted_difference_is_detected():
    rng = random.Random(0)
    truth = draw(300, 0.5, rng)
    better = [t or rng.random() < 0.4 for t in truth]  # right wherever truth is, and on 40% of the rest
    table = paired_comparison({"better": better, "base": truth})
    row = table.iloc[0]
    assert row.p < 1e-6 and row.ci_low > 0 and row.verdict == "better better"


@pytest.mark.slow
def test_identical_systems_are_flagged_at_most_alpha_of_the_time():
    # Two systems of equal accuracy, scored on the same (correlated) prompts: a valid test rejects
    # in at most about alpha of the draws. 400 draws: the binomial sd of a 5% rate is 1.1%.
    rng, alpha, flagged_exact, flagged_bootstrap = random.Random(1), 0.05, 0, 0
    for draw_index in range(400):
        easy = draw(200, 0.6, rng)
        a = [e if rng.random() < 0.7 else rng.random() < 0.6 for e in easy]
        b = [e if rng.random() < 0.7 else rng.random() < 0.6 for e in easy]
        flagged_exact += mcnemar_exact(a, b) < alpha
        low, high = paired_bootstrap(a, b, resamples=500, seed=draw_index)
        flagged_bootstrap += low > 0 or high < 0
    assert flagged_exact / 400 <= alpha + 0.02
    assert flagged_bootstrap / 400 <= alpha + 0.03


def test_the_paired_bootstrap_interval_contains_the_observed_difference():
    rng = random.Random(2)
    a, b = draw(150, 0.6, rng), draw(150, 0.5, rng)
    low, high = paired_bootstrap(a, b)
    assert low <= (sum(a) - sum(b)) / 150 <= high


def test_holm_adjusts_step_down_and_stays_monotone():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2]) == [0.2]


def test_paired_comparison_covers_all_pairs_or_each_against_a_reference():
    rng = random.Random(3)
    systems = {name: draw(50, 0.5, rng) for name in ("x", "y", "z")}
    assert [(r.a, r.b) for _, r in paired_comparison(systems).iterrows()] == [("x", "y"), ("x", "z"), ("y", "z")]
    against = paired_comparison(systems, reference="z")
    assert [(r.a, r.b) for _, r in against.iterrows()] == [("x", "z"), ("y", "z")]
    assert (against["p (Holm)"] >= against["p"]).all()
    assert all(v.startswith("cannot tell apart at n = 50") or v.endswith("better") for v in against.verdict)


@pytest.mark.parametrize("call, message", [
    (lambda: mcnemar_exact([True, False], [True]), "same prompts: 2 vs 1"),
    (lambda: mcnemar_exact([], []), "no scored prompts"),
    (lambda: paired_comparison({"x": [True]}), "at least two systems"),
    (lambda: paired_comparison({"x": [True], "y": [False]}, reference="w"), "reference 'w' is not one of"),
    (lambda: paired_comparison({"x": [True], "y": [False]}, alpha=1.5), "alpha must be in"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
