"""The recorded learning-rate sweeps and the rule that picks each method's rate from them.

Every rate the method chapters use traces to a measurement: ``python -m labkit.sweep`` trains every
method at each rate of :data:`GRID` on the embedded model, scores each run on the tasks' *validation*
split, and writes :data:`labkit.paths.TUNING_RECORD`. :func:`learning_rate` reads the chosen rate from
it; the chapters then report the *test* split, which no choice here has seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from labkit.paths import TUNING_RECORD
from labkit.profiles import Profile

GRID: dict[str, list[float]] = {
    "full": [1e-4, 3e-4, 1e-3, 3e-3],
    "lora": [1e-3, 3e-3, 1e-2], "qlora": [1e-3, 3e-3, 1e-2], "dora": [1e-3, 3e-3, 1e-2],
    "rslora": [1e-3, 3e-3, 1e-2], "pissa": [1e-3, 3e-3, 1e-2], "loraplus": [3e-4, 1e-3, 3e-3],
    "prompt": [3e-2, 1e-1, 3e-1], "prefix": [3e-2, 1e-1, 3e-1], "ia3": [3e-2, 1e-1, 3e-1],
}
"""Peak learning rates tried per method, about 3x apart."""

SETTINGS = dict(tasks=["flip"], train_per_task=800, eval_per_task=100, steps=80, r=8, num_virtual_tokens=16, seed=0,
                split="validation")
"""What every sweep run shares: the method chapters' defaults on the CPU profile, scored on ``split``."""

TOLERANCE = 0.05
"""Accuracies this close to a sweep's best count as equally good (100 prompts: well inside the noise)."""

HUB_LEARNING_RATES = {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4, "dora": 2e-4, "rslora": 2e-4, "pissa": 2e-4,
                      "loraplus": 2e-5, "prompt": 3e-2, "prefix": 1e-2, "ia3": 3e-3}
"""Starting points for hub models (GPU profile): common practice, not tuned here; sweep before concluding."""


def best_rates(table: pd.DataFrame) -> dict[str, float]:
    """Per method, the rate that is as accurate as the best (within :data:`TOLERANCE`) and forgets least.

    Where no rate scores above zero (the method does not learn the task in this budget), the rate
    with the lowest final training loss.
    """
    best = {}
    for kind, runs in table.groupby("kind", sort=False):
        top = runs["accuracy"].max()
        if top == 0:
            best[kind] = float(runs.loc[runs["final train loss"].idxmin(), "learning rate"])
        else:
            candidates = runs[runs["accuracy"] >= top - TOLERANCE]
            best[kind] = float(candidates.loc[candidates["forgetting"].idxmin(), "learning rate"])
    return best


def tuning_record(path: str | Path | None = None) -> pd.DataFrame:
    """The recorded sweep: one row per (method, learning rate) with the harness's columns."""
    return pd.DataFrame(json.loads(Path(path or TUNING_RECORD).read_text())["runs"])


def tuning_settings(path: str | Path | None = None) -> dict:
    """What the recorded sweep shared (task, data sizes, steps, seed) and the ``split`` it was scored on."""
    return json.loads(Path(path or TUNING_RECORD).read_text())["settings"]


def learning_rate(kind: str, profile: Profile) -> float:
    """The peak learning rate the book uses for method ``kind`` on ``profile``'s model.

    For the embedded model: :func:`best_rates` of the recorded sweep; for hub models: :data:`HUB_LEARNING_RATES`.
    """
    table = best_rates(tuning_record()) if profile.embedded else HUB_LEARNING_RATES
    if kind not in table:
        raise ValueError(f"method {kind!r} is unknown; expected one of {', '.join(table)}")
    return table[kind]
