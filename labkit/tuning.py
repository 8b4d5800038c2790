"""Learning-rate sweeps per method kind, recorded, so that every rate the comparison uses traces to a measurement.

``python -m labkit.tuning`` trains every kind at each rate of :data:`GRID` on the embedded model
(the chapters' task, data and step budget) and writes :data:`RECORD`; ``labkit.comparison.learning_rate``
reads the best rate per kind from it. Forgetting in the record is measured on all of the held-out
text (the chapters use ``labkit.comparison.forgetting_texts``, a capped subset, to save time).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from labkit.corpus import ASSETS

GRID: dict[str, list[float]] = {
    "full": [1e-4, 3e-4, 1e-3, 3e-3],
    "lora": [1e-3, 3e-3, 1e-2], "qlora": [1e-3, 3e-3, 1e-2], "dora": [1e-3, 3e-3, 1e-2],
    "rslora": [1e-3, 3e-3, 1e-2], "pissa": [1e-3, 3e-3, 1e-2], "loraplus": [3e-4, 1e-3, 3e-3],
    "prompt": [3e-2, 1e-1, 3e-1], "prefix": [3e-2, 1e-1, 3e-1], "ia3": [3e-2, 1e-1, 3e-1],
}
"""Peak learning rates tried per kind, about 3x apart."""

SETTINGS = dict(tasks=["flip"], train_per_task=800, test_per_task=100, steps=80, r=8, num_virtual_tokens=16, seed=0)
"""What every sweep run shares: the method chapters' defaults on the CPU profile."""

RECORD = ASSETS / "tuning.json"


TOLERANCE = 0.05
"""Accuracies this close to a sweep's best count as equally good (100 test prompts: well inside the noise)."""


def best_rates(table: pd.DataFrame) -> dict[str, float]:
    """Per kind, the rate that is as accurate as the best (within :data:`TOLERANCE`) and forgets least.

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
    """The recorded sweep: one row per (kind, learning rate) with the harness's columns."""
    record = json.loads(Path(path or RECORD).read_text())
    return pd.DataFrame(record["runs"])


def main(path: str | Path | None = None) -> None:
    import labkit
    from labkit import tasks
    from labkit.comparison import Method, heldout_loss, heldout_window, run_method
    from labkit.corpus import heldout_documents

    profile = labkit.get_profile("cpu-tiny", eval_examples=SETTINGS["test_per_task"])
    base_model, tokenizer = labkit.load_model(profile)
    train = tasks.verifiable_tasks(SETTINGS["train_per_task"], seed=SETTINGS["seed"], fmt="completion", tasks=SETTINGS["tasks"])
    test = tasks.verifiable_tasks(SETTINGS["test_per_task"], seed=SETTINGS["seed"], split="test", fmt="completion", tasks=SETTINGS["tasks"])
    heldout = [d.text for d in heldout_documents()]
    base_loss = heldout_loss(base_model, tokenizer, heldout, heldout_window(profile, base_model))
    runs, start = [], time.perf_counter()
    for kind, rates in GRID.items():
        for lr in rates:
            method = Method(f"{kind} @ {lr:g}", kind, lr, r=SETTINGS["r"], num_virtual_tokens=SETTINGS["num_virtual_tokens"])
            row = run_method(method, profile=profile, base_model=base_model, tokenizer=tokenizer, train=train, test=test,
                             heldout=heldout, steps=SETTINGS["steps"], seed=SETTINGS["seed"], base_loss=base_loss,
                             disable_tqdm=True, logging_steps=SETTINGS["steps"] // 20).row
            runs.append({"learning rate": lr, **{k: (v if isinstance(v, str) else float(v)) for k, v in row.items()}})
            print(f"{method.name}: accuracy {row['accuracy']:.2f}, forgetting {row['forgetting']:+.3f}", flush=True)
    record = {"settings": SETTINGS, "seconds": round(time.perf_counter() - start), "runs": runs}
    Path(path or RECORD).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
