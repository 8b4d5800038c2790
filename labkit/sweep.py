"""Rebuild the learning-rate record: ``python -m labkit.sweep`` (about 10 minutes on 2 cores).

Trains every method at each rate of ``labkit.tuning.GRID`` with the comparison harness, scores each run
on the tasks' validation split (never the test split the chapters report) and writes the record that
``labkit.tuning.learning_rate`` reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from labkit.paths import TUNING_RECORD
from labkit.tuning import GRID, SETTINGS


def sweep(path: str | Path | None = None, grid: dict[str, list[float]] | None = None) -> dict:
    """Run the sweep over ``grid`` (default :data:`labkit.tuning.GRID`), write the record to ``path`` and return it."""
    import labkit
    from labkit import tasks
    from labkit.comparison import Experiment, Method, run_method

    s = SETTINGS
    profile = labkit.get_profile("cpu-tiny")
    base_model, tokenizer = labkit.load_model(profile)
    data = dict(seed=s["seed"], fmt="completion", tasks=s["tasks"])
    experiment = Experiment(profile, base_model, tokenizer, train=tasks.verifiable_tasks(s["train_per_task"], **data),
                            test=tasks.verifiable_tasks(s["eval_per_task"], split=s["split"], **data),
                            steps=s["steps"], seed=s["seed"])
    runs, start = [], time.perf_counter()
    for kind, rates in (grid or GRID).items():
        for lr in rates:
            method = Method(f"{kind} @ {lr:g}", kind, lr, r=s["r"], num_virtual_tokens=s["num_virtual_tokens"])
            row = run_method(method, experiment, disable_tqdm=True, logging_steps=max(1, s["steps"] // 20)).row
            runs.append({"learning rate": lr, **{k: (v if isinstance(v, str) else float(v)) for k, v in row.items()}})
            print(f"{method.name}: {s['split']} accuracy {row['accuracy']:.2f}, forgetting {row['forgetting']:+.3f}", flush=True)
    record = {"settings": s, "seconds": round(time.perf_counter() - start), "runs": runs}
    Path(path or TUNING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    sweep()
