import pandas as pd
import pytest

import labkit
from labkit.comparison import COLUMNS
from labkit.tuning import GRID, HUB_LEARNING_RATES, SETTINGS, best_rates, learning_rate, tuning_record, tuning_settings
from labkit.vocabulary import METHODS


def test_best_rate_is_as_accurate_as_the_best_and_forgets_least():
    table = pd.DataFrame([
        {"kind": "a", "learning rate": 1e-3, "accuracy": 0.50, "forgetting": 0.1, "final train loss": 0.5},
        {"kind": "a", "learning rate": 3e-3, "accuracy": 0.62, "forgetting": 0.3, "final train loss": 0.4},
        {"kind": "a", "learning rate": 1e-2, "accuracy": 0.64, "forgetting": 1.3, "final train loss": 0.3},
        {"kind": "b", "learning rate": 1e-3, "accuracy": 0.40, "forgetting": 0.1, "final train loss": 0.6},
        {"kind": "b", "learning rate": 1e-2, "accuracy": 0.60, "forgetting": 1.0, "final train loss": 0.3},
        {"kind": "c", "learning rate": 1e-2, "accuracy": 0.0, "forgetting": 0.1, "final train loss": 2.0},
        {"kind": "c", "learning rate": 1e-1, "accuracy": 0.0, "forgetting": 0.3, "final train loss": 1.5},
    ])
    # a: 0.62 is within the tolerance of 0.64 and forgets less; b: nothing else is close to 0.60;
    # c: learns nothing at any rate, so the lowest training loss decides
    assert best_rates(table) == {"a": 3e-3, "b": 1e-2, "c": 1e-1}


def test_the_record_covers_the_grid_with_the_chapters_settings():
    assert tuning_settings() == SETTINGS
    runs = tuning_record()
    assert sorted(GRID) == sorted(METHODS)
    for kind, rates in GRID.items():
        assert sorted(runs[runs.kind == kind]["learning rate"]) == sorted(rates), kind
    assert set(COLUMNS) <= set(runs.columns)
    assert runs["accuracy"].between(0, 1).all() and runs["accuracy"].nunique() > 3


def test_learning_rate_reads_the_record_for_the_embedded_model_and_a_table_for_hub_models():
    best = best_rates(tuning_record())
    cpu = labkit.get_profile("cpu-tiny")
    assert {kind: learning_rate(kind, cpu) for kind in METHODS} == best
    hub = labkit.PROFILES["gpu"]
    assert {kind: learning_rate(kind, hub) for kind in METHODS} == HUB_LEARNING_RATES
    with pytest.raises(ValueError, match="method 'adapter' is unknown"):
        learning_rate("adapter", cpu)


def test_the_record_was_selected_on_the_validation_split_not_the_test_split():
    assert tuning_settings()["split"] == "validation"
