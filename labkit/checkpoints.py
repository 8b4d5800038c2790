"""Checkpoint and resume: a run killed mid-way (SIGKILL) and resumed from its last checkpoint ends as an uninterrupted one.

A checkpoint saved by transformers' Trainer every ``save_steps`` steps holds what resuming needs: the
weights, the optimizer's moments, the scheduler's position, every RNG state (Python, NumPy, torch)
and ``trainer_state.json`` (the step, the log so far). On resume the Trainer restores them and skips
the batches already seen, so the data order and the dropout masks continue where they stopped.

:func:`run` is one training run of the shipped model on a task, in this process; ``python -m
labkit.checkpoints`` runs it in a fresh process, where ``--kill-at`` ends the process with SIGKILL
(no cleanup, as an out-of-memory killer or a preempted machine would) right after that step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

RESULT = "result.json"
"""Written to the output folder by a run that finishes: the loss at every step."""
FINAL = "final"
"""Subfolder of the output folder with the finished run's weights."""


class KillAt(TrainerCallback):
    """Sends this process SIGKILL when optimizer step ``step`` ends: after its update, before its log and
    before its checkpoint (the Trainer saves after this hook)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-<step>`` folder under ``output_dir``, or ``None``."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    return Path(found) if found else None


def checkpoint_contents(checkpoint: str | Path) -> dict[str, int]:
    """File name -> bytes of one checkpoint folder."""
    return {f.name: f.stat().st_size for f in sorted(Path(checkpoint).iterdir()) if f.is_file()}


def run(output_dir: str | Path, *, steps: int, save_steps: int, resume: bool = False, kill_at: int | None = None,
        profile: str = "cpu-tiny", tasks_: tuple[str, ...] = ("flip",), examples: int = 200, seed: int = 0,
        save_total_limit: int | None = None) -> list[float]:
    """Fully fine-tune ``profile``'s model on ``tasks_`` for ``steps`` steps, checkpointing every ``save_steps``;
    returns the loss of every step and writes it (:data:`RESULT`) and the weights (:data:`FINAL`) to ``output_dir``.

    ``resume``: continue from :func:`last_checkpoint`. ``kill_at``: SIGKILL this process after that step.
    """
    import labkit
    from labkit import tasks
    from labkit.train import sft, sft_config

    if kill_at is not None and not 1 <= kill_at < steps:
        raise ValueError(f"kill_at must be a step between 1 and {steps - 1}; got {kill_at}")
    if resume and last_checkpoint(output_dir) is None:
        raise FileNotFoundError(f"resume=True but {output_dir} holds no checkpoint-<step> folder")
    chosen = labkit.get_profile(profile)
    torch.manual_seed(seed)
    model, tokenizer = labkit.load_model(chosen)
    train = tasks.verifiable_tasks(examples, seed=seed, fmt="completion", tasks=list(tasks_))
    config = sft_config(chosen, kind="full", output_dir=str(output_dir), max_steps=steps, save_strategy="steps",
                        save_steps=save_steps, save_total_limit=save_total_limit, logging_steps=1, seed=seed,
                        disable_tqdm=True)
    callbacks = [KillAt(kill_at)] if kill_at is not None else []
    trainer = sft(model, tokenizer, train, config, callbacks=callbacks, resume_from_checkpoint=True if resume else None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainer.save_model(str(Path(output_dir) / FINAL))
    (Path(output_dir) / RESULT).write_text(json.dumps({"losses": losses}))
    return losses


def run_in_process(output_dir: str | Path, **options) -> subprocess.CompletedProcess:
    """:func:`run` in a fresh Python process (``python -m labkit.checkpoints``); a killed run returns -SIGKILL."""
    args = [sys.executable, "-m", "labkit.checkpoints", str(output_dir)]
    for name, value in options.items():
        flag = "--" + name.rstrip("_").replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        elif value is not None:
            args += [flag, str(value)]
    return subprocess.run(args, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-steps", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--profile", default="cpu-tiny")
    parser.add_argument("--tasks", nargs="+", default=["flip"])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-total-limit", type=int)
    a = parser.parse_args(argv)
    run(a.output_dir, steps=a.steps, save_steps=a.save_steps, resume=a.resume, kill_at=a.kill_at, profile=a.profile,
        tasks_=tuple(a.tasks), examples=a.examples, seed=a.seed, save_total_limit=a.save_total_limit)


if __name__ == "__main__":
    main()
