"""One call that compares a base model with tuned ones: task score ± CI, perplexity, forgetting, samples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from labkit.eval.heldout import forgetting, heldout_loss
from labkit.eval.paired import mcnemar_exact, paired_bootstrap
from labkit.eval.scoring import accuracy_table, score_examples

REPORT_COLUMNS = ["accuracy", "ci_low", "ci_high", "gain", "gain_ci_low", "gain_ci_high", "gain_p",
                  "heldout_loss", "heldout_perplexity", "forgetting"]
"""``Report.table``'s columns before the per-task accuracies (``acc/<task>``)."""


@dataclass
class Report:
    table: pd.DataFrame
    """One row per model: overall accuracy with its Wilson interval, the paired gain over the baseline
    with a paired bootstrap interval and McNemar's exact p-value (``gain_p``), held-out loss and
    perplexity (``labkit.eval.heldout``), forgetting (held-out loss minus the baseline's), and per-task accuracies."""
    accuracy: pd.DataFrame
    """Long format: model, task, n, correct, accuracy, ci_low, ci_high."""
    samples: pd.DataFrame
    """The first few test prompts with every model's answer side by side."""
    scores: dict[str, pd.DataFrame]
    """Every model's per-example predictions."""

    def plot(self, ax=None):
        """Per-task accuracy of every model with 95% Wilson intervals as error bars."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(7, 3.5))[1]
        models = list(self.table.index)
        tasks = list(dict.fromkeys(self.accuracy["task"]))
        width = 0.8 / len(models)
        for i, name in enumerate(models):
            part = self.accuracy[self.accuracy.model == name].set_index("task").loc[tasks]
            xs = [t + (i - (len(models) - 1) / 2) * width for t in range(len(tasks))]
            err = [part.accuracy - part.ci_low, part.ci_high - part.accuracy]
            ax.bar(xs, part.accuracy, width, yerr=err, capsize=3, label=name)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set(ylabel="exact match", ylim=(0, 1), title="Task accuracy (95% Wilson intervals)")
        ax.legend()
        return ax


def compare(
    models: Mapping[str, tuple],
    test_dataset,
    *,
    max_seq_len: int | None = None,
    heldout_texts: Sequence[str] | None = None,
    baseline: str | None = None,
    n_samples: int = 4,
    seed: int = 0,
    **generate_kwargs,
) -> Report:
    """Score every ``(model, tokenizer)`` in ``models`` on the same test set and held-out text.

    ``baseline`` (default: the first model) is what gains and forgetting are measured against.
    The gain interval is a paired bootstrap over test examples (the same prompts answered by both) and
    ``gain_p`` McNemar's exact test. With ``max_seq_len`` (the profile's), held-out loss and forgetting
    are measured as everywhere in labkit (``labkit.eval.heldout``), on ``heldout_texts`` if given.
    """
    if not models:
        raise ValueError("no models to compare")
    baseline = baseline or next(iter(models))
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not one of the models {list(models)}")
    scores = {name: score_examples(m, tok, test_dataset, **generate_kwargs) for name, (m, tok) in models.items()}
    accuracy = pd.concat([accuracy_table(s).reset_index().assign(model=name) for name, s in scores.items()],
                         ignore_index=True)
    base_correct = scores[baseline]["correct"].tolist()
    rows = {}
    for name, (model, tokenizer) in models.items():
        overall = accuracy[(accuracy.model == name) & (accuracy.task == "all")].iloc[0]
        correct = scores[name]["correct"].tolist()
        low, high = paired_bootstrap(correct, base_correct, seed=seed) if name != baseline else (0.0, 0.0)
        row = {"accuracy": overall.accuracy, "ci_low": overall.ci_low, "ci_high": overall.ci_high,
               "gain": (sum(correct) - sum(base_correct)) / len(correct), "gain_ci_low": low, "gain_ci_high": high,
               "gain_p": mcnemar_exact(correct, base_correct)}
        if max_seq_len is not None:
            loss = heldout_loss(model, tokenizer, max_seq_len=max_seq_len, texts=heldout_texts)
            row |= {"heldout_loss": loss, "heldout_perplexity": math.exp(loss)}
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    if max_seq_len is not None:
        table["forgetting"] = [forgetting(loss, table.loc[baseline, "heldout_loss"]) for loss in table["heldout_loss"]]
    for task in dict.fromkeys(test_dataset["task"]):
        table[f"acc/{task}"] = [accuracy[(accuracy.model == n) & (accuracy.task == task)].accuracy.item() for n in table.index]
    first = scores[baseline].head(n_samples)
    samples = first[["task", "answer"]].copy()
    for name, s in scores.items():
        samples[name] = s["prediction"].head(n_samples).values
    return Report(table=table, accuracy=accuracy, samples=samples, scores=scores)
