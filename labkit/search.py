"""Tuning LoRA on validation loss: an Optuna search (TPE sampler, median pruner) and an effective batch x rate grid."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from transformers import TrainerCallback

from labkit.comparison import Experiment, Method, train_method

METRIC = "eval_loss"
"""What a trial is scored on: the trainer's validation loss, the mean loss over the answer tokens of
``Experiment.test`` (the validation split when tuning). Lower is better."""


@dataclass
class SearchSpace:
    """Where the search looks: LoRA's peak learning rate (log scale), its rank, and the warmup."""

    learning_rate: tuple[float, float] = (3e-4, 3e-2)
    """Lowest and highest peak learning rate; sampled on a log scale (rates matter by ratio, not difference)."""
    r: tuple[int, ...] = (2, 4, 8, 16)
    """Ranks to choose from; ``lora_alpha`` is ``2 * r``, as ``labkit.comparison.Method`` sets it."""
    warmup_share: tuple[float, float] = (0.0, 0.2)
    """Lowest and highest share of the run's steps spent warming the rate up from zero."""

    def __post_init__(self):
        self.learning_rate, self.r, self.warmup_share = tuple(self.learning_rate), tuple(self.r), tuple(self.warmup_share)
        low, high = _pair("learning_rate", self.learning_rate)
        if not 0 < low < high:
            raise ValueError(f"SearchSpace.learning_rate: need 0 < low < high, got ({low}, {high})")
        if not self.r or any(not isinstance(r, int) or r < 1 for r in self.r) or len(set(self.r)) != len(self.r):
            raise ValueError(f"SearchSpace.r: need distinct integer ranks >= 1, got {self.r}")
        low, high = _pair("warmup_share", self.warmup_share)
        if not 0 <= low <= high < 1:
            raise ValueError(f"SearchSpace.warmup_share: need 0 <= low <= high < 1, got ({low}, {high})")

    def suggest(self, trial) -> dict:
        """One point of the space, drawn by the ``optuna.Trial``'s sampler: ``learning_rate``, ``r``, ``warmup_share``."""
        return {"learning_rate": trial.suggest_float("learning_rate", *self.learning_rate, log=True),
                "r": trial.suggest_categorical("r", list(self.r)),
                "warmup_share": trial.suggest_float("warmup_share", *self.warmup_share)}

    def check(self, params: dict) -> None:
        """Raise ``ValueError`` naming every parameter of ``params`` that is missing or outside this space."""
        problems = [f"{name} missing" for name in ("learning_rate", "r", "warmup_share") if name not in params]
        if not problems:
            (lr_low, lr_high), (w_low, w_high) = self.learning_rate, self.warmup_share
            if not lr_low <= params["learning_rate"] <= lr_high:
                problems.append(f"learning_rate {params['learning_rate']} is outside [{lr_low}, {lr_high}]")
            if params["r"] not in self.r:
                problems.append(f"r {params['r']} is not one of {self.r}")
            if not w_low <= params["warmup_share"] <= w_high:
                problems.append(f"warmup_share {params['warmup_share']} is outside [{w_low}, {w_high}]")
        if problems:
            raise ValueError(f"parameters {params} do not fit the search space: {'; '.join(problems)}")

    def distributions(self) -> dict:
        """The Optuna distributions :meth:`suggest` draws from, by parameter name."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        return {"learning_rate": FloatDistribution(*self.learning_rate, log=True), "r": CategoricalDistribution(list(self.r)),
                "warmup_share": FloatDistribution(*self.warmup_share)}


def _pair(name: str, values: tuple) -> tuple[float, float]:
    if len(values) != 2:
        raise ValueError(f"SearchSpace.{name}: need (low, high), got {values}")
    return values


def warmup_steps(warmup_share: float, steps: int) -> int:
    """Warmup steps for a share of a run of ``steps`` steps, rounded (fewer than ``steps``)."""
    return min(steps - 1, round(warmup_share * steps))


def fit(method: Method, experiment: Experiment, *, callbacks: Sequence[TrainerCallback] = (), **config_overrides):
    """``labkit.comparison.train_method`` evaluating on ``experiment.test`` (the validation split when tuning), with
    ``callbacks``; returns the trainer. Evaluate while training (``eval_strategy``), not after."""
    return train_method(method, experiment, callbacks=callbacks, eval_dataset=experiment.test, **config_overrides)


class PruneOnEvaluate(TrainerCallback):
    """Reports each evaluation's :data:`METRIC` to an Optuna trial; when its pruner says so, raises
    ``optuna.TrialPruned`` out of the training loop, as transformers' own Optuna integration does (the run ends
    there: a stopped trainer's closing hooks are not needed, and one of them, the notebook progress bar, fails
    on a run stopped at its second step).

    Also evaluates at the run's last step, wherever ``eval_steps`` falls: the trial's value is the last one.
    """

    def __init__(self, trial, metric: str = METRIC):
        self.trial, self.metric = trial, metric
        self.reported: dict[int, float] = {}
        """Optimizer step -> the value reported there."""
        self.pruned_at: int | None = None
        """The step at which the pruner ended the run, or ``None``."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.metric not in (metrics or {}):
            raise KeyError(f"PruneOnEvaluate: the evaluation logged no {self.metric!r}; it logged {sorted(metrics or {})}")
        value = float(metrics[self.metric])
        self.reported[state.global_step] = value
        self.trial.report(value, state.global_step)
        if self.trial.should_prune():
            import optuna

            self.pruned_at = state.global_step
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at step {state.global_step}")


class LoraObjective:
    """An Optuna objective: one LoRA run of ``experiment.steps`` steps per trial at the point
    :meth:`SearchSpace.suggest` draws, evaluated on ``experiment.test`` ``evaluations`` times on the way
    (each value reported, so the study's pruner can stop the run); the trial's value is the last one.

    Holds the model of the best completed trial (:attr:`best_model`), so the chosen configuration need not
    be trained again. ``config_overrides`` go to every run's ``labkit.train.sft_config``.
    """

    def __init__(self, experiment: Experiment, space: SearchSpace | None = None, *, evaluations: int = 4,
                 **config_overrides):
        if evaluations < 1:
            raise ValueError(f"evaluations must be >= 1, got {evaluations}")
        self.experiment, self.space, self.evaluations = experiment, space or SearchSpace(), evaluations
        self.config_overrides = config_overrides
        self.best_model, self.best_value, self.best_trial = None, math.inf, None

    def method(self, params: dict) -> Method:
        """The ``labkit.comparison.Method`` a trial's parameters describe."""
        return Method(f"lora r={params['r']} lr={params['learning_rate']:.2g}", "lora", params["learning_rate"], r=params["r"])

    def __call__(self, trial) -> float:
        params = self.space.suggest(trial)
        steps = self.experiment.steps
        prune = PruneOnEvaluate(trial)
        start = time.perf_counter()
        try:  # a pruned trial ends in optuna.TrialPruned, raised from inside the training loop
            trainer = fit(self.method(params), self.experiment, callbacks=[prune],
                          warmup_steps=warmup_steps(params["warmup_share"], steps), eval_strategy="steps",
                          eval_steps=max(1, steps // self.evaluations), **self.config_overrides)
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - start)
        value = prune.reported[trainer.state.global_step]
        if value < self.best_value:
            self.best_model, self.best_value, self.best_trial = trainer.model, value, trial.number
        return value


def add_finished_run(study, space: SearchSpace, params: dict, reported: dict[int, float], *, seconds: float = math.nan):
    """Add a run trained outside the study (a watched run, a baseline) as a completed trial: ``reported`` maps
    evaluation steps to :data:`METRIC` values, the last one is the trial's value. The sampler learns from it and
    the pruner compares later trials with its values, so a known configuration is not trained twice.
    Parameters outside ``space`` are refused (:meth:`SearchSpace.check`)."""
    import optuna

    space.check(params)
    if not reported:
        raise ValueError("add_finished_run: the run reported no values; expected {step: validation loss}")
    study.add_trial(optuna.trial.create_trial(params=params, distributions=space.distributions(), value=reported[max(reported)],
                                              intermediate_values=reported, user_attrs={"seconds": seconds}))
    return study.trials[-1]


def make_study(*, seed: int, n_startup_trials: int = 4, prune_after_trials: int = 2, prune_from_step: int = 0):
    """A study that minimises :data:`METRIC`: TPE sampling (random for the first ``n_startup_trials`` trials,
    deterministic in ``seed``) and median pruning (a trial stops when its value at a step is worse than the
    median of earlier trials' at that step, once ``prune_after_trials`` trials completed, from step
    ``prune_from_step`` on). Optuna's per-trial log lines are silenced."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=prune_after_trials, n_warmup_steps=prune_from_step)
    return optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)


def trials_table(study) -> pd.DataFrame:
    """One row per trial, indexed by trial number: ``state``, the parameters, ``value`` (for a pruned trial,
    Optuna keeps the last value it reported), ``last_step`` (the step of that value) and
    ``seconds`` (the run's wall time, evaluations included)."""
    rows = [{"trial": t.number, "state": t.state.name, **t.params,
             "value": t.value if t.value is not None else math.nan,
             "last_step": max(t.intermediate_values, default=0),
             "seconds": t.user_attrs.get("seconds", math.nan)} for t in study.trials]
    return pd.DataFrame(rows).set_index("trial")


def batch_rate_grid(experiment: Experiment, *, batch_sizes: Sequence[int], learning_rates: Sequence[float],
                    examples: int, r: int = 8, warmup_share: float = 0.05, exact_match: bool = False) -> pd.DataFrame:
    """LoRA at every effective batch x peak learning rate, each run one pass over the same training ``examples``
    (the first rows of ``experiment.train``: a batch twice as large takes half the steps), scored by
    :data:`METRIC` on ``experiment.test``.

    An effective batch larger than the profile's ``batch_size`` is accumulated from micro-batches of that
    size. Warmup is the same ``warmup_share`` of every run's steps (:func:`warmup_steps`; ``sft_config``'s
    at-least-one-step default would spend a quarter of a four-step run at a rate near zero).
    ``exact_match``: also generate and score answers (``labkit.eval.score_examples``). One row per run:
    ``effective_batch``, ``learning_rate``, ``steps``, ``warmup_steps``, ``micro_batch``, ``accumulation``,
    ``validation_loss``, ``validation_exact_match`` (if asked) and ``seconds`` (training and its evaluation).
    """
    from labkit.eval import score_examples

    ex = experiment
    for b in batch_sizes:
        if b < 1 or b % min(b, ex.profile.batch_size):
            raise ValueError(f"effective batch {b}: must be >= 1 and, above the profile's batch_size "
                             f"{ex.profile.batch_size}, a multiple of it")
        if examples // b < 1:
            raise ValueError(f"effective batch {b}: {examples} examples make no step; need examples >= {b}")
    if examples > len(ex.train):
        raise ValueError(f"examples={examples}, but the experiment has only {len(ex.train)} training rows")
    ex = dataclasses.replace(ex, train=ex.train.select(range(examples)))
    rows = []
    for b in batch_sizes:
        micro = min(b, ex.profile.batch_size)
        for lr in learning_rates:
            steps = examples // b
            start = time.perf_counter()
            warmup = warmup_steps(warmup_share, steps)
            trainer = fit(Method(f"lora b={b} lr={lr:g}", "lora", lr, r=r), ex, max_steps=steps, warmup_steps=warmup,
                          per_device_train_batch_size=micro, gradient_accumulation_steps=b // micro,
                          eval_strategy="steps", eval_steps=steps)  # once, after the last step
            (loss,) = [h[METRIC] for h in trainer.state.log_history if METRIC in h]
            row = {"effective_batch": b, "learning_rate": lr, "steps": steps, "warmup_steps": warmup, "micro_batch": micro,
                   "accumulation": b // micro, "seconds": time.perf_counter() - start, "validation_loss": loss}
            if exact_match:
                scores = score_examples(trainer.model, ex.tokenizer, ex.test, progress=False,
                                        max_new_tokens=ex.profile.max_new_tokens)
                row["validation_exact_match"] = float(scores["correct"].mean())
            rows.append(row)
            del trainer
    return pd.DataFrame(rows)
