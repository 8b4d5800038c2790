"""labkit.decide: budgets validated, the record read at the book's rates, and plans that keep each method."""

import pandas as pd
import pytest

from labkit.check import LEVERS
from labkit.decide import CANDIDATES, Budget, candidates, recorded_tradeoffs


@pytest.mark.parametrize("kwargs, error", [
    (dict(gpu_gib=0), "gpu_gib must be > 0"),
    (dict(examples=0), "examples must be > 0"),
    (dict(tokens_per_example=4096, seq_len=1024), "tokens_per_example .4096. is longer than seq_len"),
    (dict(precision="fp8"), "precision"),
])
def test_a_budget_rejects_what_cannot_be_planned(kwargs, error):
    with pytest.raises(ValueError, match=error):
        Budget("Qwen2.5-0.5B", **({"gpu_gib": 16} | kwargs))


def _run(kind, rate, accuracy, forgetting, seconds, mib):
    return {"kind": kind, "learning rate": rate, "accuracy": accuracy, "ci_low": accuracy - 0.1, "ci_high": accuracy + 0.1,
            "forgetting": forgetting, "trainable share": 1.0 if kind == "full" else 0.05, "train s": seconds,
            "peak MiB": mib, "final train loss": 0.5}


def test_the_record_is_read_at_the_rate_the_book_uses_and_relative_to_full():
    record = pd.DataFrame([_run("full", 1e-4, 0.3, 0.1, 10, 200), _run("full", 3e-4, 0.6, 0.2, 12, 200),
                           _run("lora", 1e-3, 0.6, 0.5, 6, 100), _run("lora", 3e-3, 0.59, 0.3, 9, 100)])
    table = recorded_tradeoffs(record)
    assert table.loc["full", "learning rate"] == 3e-4  # the accurate one
    assert table.loc["lora", "learning rate"] == 3e-3  # as accurate within the tolerance, and forgets less
    assert table.loc["lora", "time vs full"] == pytest.approx(9 / 12)
    assert table.loc["lora", "peak memory vs full"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no full fine-tuning run"):
        recorded_tradeoffs(record[record["kind"] == "lora"])


def test_the_shipped_record_covers_every_planned_method():
    assert set(CANDIDATES) <= set(recorded_tradeoffs().index)


def test_a_large_gpu_runs_every_method_as_asked():
    table = candidates(Budget("Qwen2.5-0.5B", gpu_gib=10_000, seq_len=1024))
    assert list(table.index) == list(CANDIDATES)
    assert table["fits as asked"].all() and (table["cheapest fit"] == "as asked").all() and (table["GPUs"] == 1).all()
    assert (table["GiB per GPU"] == table["GiB at the batch asked"]).all()


def test_a_small_gpu_gets_levers_that_keep_the_method_and_fit():
    budget = Budget("Llama-3.1-8B", gpu_gib=24, seq_len=2048)
    table = candidates(budget)
    kept = {name for name, changes, _ in LEVERS if "method" not in changes}
    for method, row in table.iterrows():
        assert not row["fits as asked"] and row["GiB at the batch asked"] > budget.gpu_gib, method
        assert row["GiB per GPU"] <= budget.gpu_gib, method
        names = row["cheapest fit"].split(" + ")
        assert all(name in kept or row["GPUs"] > 1 for name in names), (method, names)
    assert table.loc["qlora", "GiB at the batch asked"] < table.loc["lora", "GiB at the batch asked"]


def test_an_epoch_costs_six_flops_per_parameter_and_token_with_every_weight_trained_four_frozen():
    table = candidates(Budget("Qwen2.5-0.5B", gpu_gib=80, examples=1000, tokens_per_example=100), methods=("full", "lora"))
    assert table.loc["full", "epoch PFLOP"] / table.loc["lora", "epoch PFLOP"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="not planned"):
        candidates(Budget("Qwen2.5-0.5B", gpu_gib=80), methods=("prompt",))
