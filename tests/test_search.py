"""labkit.search: the search space refuses bad bounds, the pruner stops trials that are worse, seeds repeat."""

import dataclasses
import math

import optuna
import pytest
from transformers import TrainerControl, TrainerState

import labkit
from labkit import tasks
from labkit.comparison import Experiment
from labkit.eval import heldout_texts
from labkit.search import (LoraObjective, PruneOnEvaluate, SearchSpace, add_finished_run, batch_rate_grid, make_study,
                           trials_table, warmup_steps)


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=(0.0, 1e-2)), r"learning_rate: need 0 < low < high"),
    (dict(learning_rate=(1e-2, 1e-3)), r"learning_rate: need 0 < low < high"),
    (dict(learning_rate=(1e-3,)), r"learning_rate: need \(low, high\)"),
    (dict(r=()), "r: need distinct integer ranks >= 1"),
    (dict(r=(0, 4)), "r: need distinct integer ranks >= 1"),
    (dict(r=(4, 4)), "r: need distinct integer ranks >= 1"),
    (dict(r=(2.5,)), "r: need distinct integer ranks >= 1"),
    (dict(warmup_share=(-0.1, 0.2)), "warmup_share: need 0 <= low <= high < 1"),
    (dict(warmup_share=(0.0, 1.0)), "warmup_share: need 0 <= low <= high < 1"),
    (dict(warmup_share=(0.3, 0.1)), "warmup_share: need 0 <= low <= high < 1"),
])
def test_the_search_space_rejects_bad_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(**kwargs)


def test_the_search_space_suggests_its_three_parameters():
    space = SearchSpace(learning_rate=[1e-4, 1e-2], r=[2, 8])  # lists are kept as tuples
    assert space.r == (2, 8)
    chosen = {"learning_rate": 1e-3, "r": 8, "warmup_share": 0.1}
    assert space.suggest(optuna.trial.FixedTrial(chosen)) == chosen


@pytest.mark.parametrize("share, steps, expected", [(0.0, 20, 0), (0.1, 20, 2), (0.13, 20, 3), (0.9, 2, 1)])
def test_warmup_steps(share, steps, expected):
    assert warmup_steps(share, steps) == expected


def curve_objective(curves):
    """A fake objective: trial k 'evaluates' curves[k] through PruneOnEvaluate, as a trainer would."""
    callbacks = {}

    def objective(trial):
        prune = callbacks[trial.number] = PruneOnEvaluate(trial)
        for step, value in enumerate(curves[trial.number], start=1):  # raises optuna.TrialPruned when pruned
            prune.on_evaluate(None, TrainerState(global_step=step), TrainerControl(), metrics={"eval_loss": value})
        return curves[trial.number][-1]

    return objective, callbacks


@pytest.mark.parametrize("prune_from_step, pruned_at", [(0, 1), (3, 3)])
def test_a_trial_whose_values_are_worse_than_the_median_is_pruned(prune_from_step, pruned_at):
    curves = [[3.0, 2.0, 1.0, 0.5], [3.2, 2.2, 1.2, 0.6], [5.0, 4.0, 3.0, 2.5], [2.5, 1.5, 0.8, 0.4]]
    objective, callbacks = curve_objective(curves)
    study = make_study(seed=0, prune_after_trials=2, prune_from_step=prune_from_step)
    study.optimize(objective, n_trials=len(curves))
    table = trials_table(study)
    assert table["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert callbacks[2].pruned_at == pruned_at and table.loc[2, "last_step"] == pruned_at
    assert table.loc[2, "value"] == curves[2][pruned_at - 1]  # Optuna keeps a pruned trial's last reported value
    assert table.loc[3, "value"] == 0.4 and study.best_trial.number == 3


def test_no_trial_is_pruned_before_enough_trials_completed():
    objective, _ = curve_objective([[3.0, 2.0], [9.0, 8.0], [1.0, 0.5]])
    study = make_study(seed=0, prune_after_trials=2)
    study.optimize(objective, n_trials=3)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "COMPLETE"]


def test_a_run_trained_elsewhere_joins_the_study_and_the_pruner_compares_against_it():
    space = SearchSpace()
    study = make_study(seed=0, prune_after_trials=2)
    known = {"learning_rate": 3e-3, "r": 8, "warmup_share": 0.05}
    trial = add_finished_run(study, space, known, {1: 3.0, 2: 2.0}, seconds=4.0)
    assert trial.state.name == "COMPLETE" and trial.value == 2.0 and trial.params == known
    objective, _ = curve_objective([None, [3.1, 2.1], [9.0, 8.0]])  # trial 0 is the added run
    study.optimize(objective, n_trials=2)
    table = trials_table(study)
    assert table["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED"] and table.loc[0, "seconds"] == 4.0


@pytest.mark.parametrize("params, reported, message", [
    ({"learning_rate": 1.0, "r": 8, "warmup_share": 0.05}, {1: 2.0}, r"learning_rate 1.0 is outside \[0.0003, 0.03\]"),
    ({"learning_rate": 3e-3, "r": 3, "warmup_share": 0.5}, {1: 2.0},
     r"r 3 is not one of \(2, 4, 8, 16\); warmup_share 0.5 is outside \[0.0, 0.2\]"),
    ({"learning_rate": 3e-3, "r": 8}, {1: 2.0}, "warmup_share missing"),
    ({"learning_rate": 3e-3, "r": 8, "warmup_share": 0.05}, {}, "reported no values"),
])
def test_a_finished_run_outside_the_space_is_refused(params, reported, message):
    with pytest.raises(ValueError, match=message):
        add_finished_run(make_study(seed=0), SearchSpace(), params, reported)


def test_prune_on_evaluate_names_a_missing_metric():
    study = make_study(seed=0)
    with pytest.raises(KeyError, match="logged no 'eval_loss'"):
        PruneOnEvaluate(study.ask()).on_evaluate(None, TrainerState(), TrainerControl(), metrics={"eval_runtime": 1.0})


def suggested(seed: int, n_trials: int = 8) -> list[dict]:
    space = SearchSpace()

    def objective(trial):  # a smooth bowl: TPE has something to learn after its random start
        p = space.suggest(trial)
        return (math.log10(p["learning_rate"]) + 2.5) ** 2 + p["r"] / 16 + p["warmup_share"]

    study = make_study(seed=seed, n_startup_trials=3)
    study.optimize(objective, n_trials=n_trials)
    return [t.params for t in study.trials]


def test_a_seed_repeats_the_suggestions_and_another_seed_changes_them():
    first = suggested(seed=7)
    assert suggested(seed=7) == first
    assert suggested(seed=8) != first


def tiny_experiment(base, steps: int, batch_size: int = 4) -> Experiment:
    model, tokenizer = base
    profile = dataclasses.replace(labkit.get_profile("cpu-tiny"), batch_size=batch_size)
    return Experiment(profile, model, tokenizer, train=tasks.verifiable_tasks(32, fmt="completion", tasks=["flip"]),
                      test=tasks.verifiable_tasks(8, split="validation", fmt="completion", tasks=["flip"]),
                      steps=steps, heldout=heldout_texts(200)[:1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_sizes=[6], examples=12), "effective batch 6: must be >= 1 and, above the profile's batch_size 4, a multiple"),
    (dict(batch_sizes=[0], examples=12), "effective batch 0: must be >= 1"),
    (dict(batch_sizes=[2, 8], examples=4), "effective batch 8: 4 examples make no step"),
    (dict(batch_sizes=[2], examples=40), "examples=40, but the experiment has only 32 training rows"),
])
def test_the_grid_refuses_batches_it_cannot_run_before_training(base, kwargs, message):
    with pytest.raises(ValueError, match=message):
        batch_rate_grid(tiny_experiment(base, steps=1), learning_rates=[1e-3], **kwargs)


@pytest.mark.slow
def test_a_real_search_prunes_a_rate_too_small_to_learn_and_keeps_the_best_model(base):
    experiment = tiny_experiment(base, steps=5)
    objective = LoraObjective(experiment, SearchSpace(learning_rate=(1e-7, 1e-1), r=(4,)), evaluations=2)
    study = make_study(seed=0, prune_after_trials=2)
    good, useless = {"learning_rate": 3e-3, "r": 4, "warmup_share": 0.0}, {"learning_rate": 1e-7, "r": 4, "warmup_share": 0.0}
    for params in (good, good, useless):
        study.enqueue_trial(params)
    study.optimize(objective, n_trials=3)
    table = trials_table(study)
    assert table["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED"]
    # evaluations every 2 steps and at the last; the useless rate was stopped at the first
    assert [sorted(t.intermediate_values) for t in study.trials] == [[2, 4, 5], [2, 4, 5], [2]]
    assert table.loc[0, "value"] == table.loc[1, "value"]  # same parameters, same seed: the same run
    assert study.trials[0].intermediate_values[5] == table.loc[0, "value"]
    assert objective.best_trial == 0 and objective.best_value == table.loc[0, "value"] and objective.best_model is not None


@pytest.mark.slow
def test_the_grid_holds_the_examples_fixed_and_accumulates_above_the_profiles_batch(base):
    grid = batch_rate_grid(tiny_experiment(base, steps=1, batch_size=2), batch_sizes=[2, 4], learning_rates=[1e-3, 3e-3],
                           examples=8, warmup_share=0.25, exact_match=True)
    assert grid[["effective_batch", "steps", "warmup_steps", "micro_batch", "accumulation"]].values.tolist() == [
        [2, 4, 1, 2, 1], [2, 4, 1, 2, 1], [4, 2, 0, 2, 2], [4, 2, 0, 2, 2]]
    assert grid["validation_loss"].gt(0).all() and grid["validation_exact_match"].between(0, 1).all()
    assert grid["validation_loss"].nunique() == 4  # every cell is its own run
