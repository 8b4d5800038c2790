"""Watch a run without an account: a trainer callback writes TensorBoard event files; :func:`read_scalars` reads them back."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
from transformers import TrainerCallback

TOKEN_COUNTING = {"include_num_input_tokens_seen": "non_padding"}
"""The training-config setting :class:`RunMonitor` needs: the trainer counts each batch's attention mask
(``state.num_input_tokens_seen``), i.e. the real prompt and answer tokens, not the padding."""

TAGS = {
    "train/loss": "the trainer's loss (labkit: mean over answer tokens), averaged over the steps since the last log",
    "train/perplexity": "exp(train/loss)",
    "train/grad_norm": "gradient norm before clipping, at the logging step",
    "train/learning_rate": "the rate the optimizer used at the logging step",
    "train/tokens_seen": "real (non-padding) input tokens trained on so far",
    "train/tokens_per_second": "real tokens per second of training since the last log (evaluations excluded)",
    "eval/loss": "the trainer's validation loss (labkit: mean over answer tokens)",
    "eval/perplexity": "exp(eval/loss)",
}
"""Every scalar :class:`RunMonitor` writes, and what it is."""

EVENT_FILE_GLOB = "events.out.tfevents.*"


def exp_loss(loss: float) -> float:
    """Perplexity of a mean loss in nats per token: ``exp(loss)``, ``inf`` where that overflows a float."""
    return math.exp(loss) if loss < 709 else math.inf


class RunMonitor(TrainerCallback):
    """Writes a run's scalars (:data:`TAGS`) to TensorBoard event files in ``logdir``, as the trainer logs them.

    Training values arrive every ``logging_steps``, evaluation values at each evaluation; the step is the
    optimizer step. The training config must count tokens (:data:`TOKEN_COUNTING`). Time per step is wall
    time from the end of the previous step (or of the logging or evaluation after it) to the end of this
    one: data loading, forward, backward and the optimizer step, not evaluations. Open the files with
    ``tensorboard --logdir <logdir>``, or read them with :func:`read_scalars`.
    """

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self._writer = None
        self._mark = 0.0
        self._train_seconds = 0.0
        self._at_last_log = (0, 0.0)  # (tokens seen, training seconds) when train/* was last written

    def on_train_begin(self, args, state, control, **kwargs):
        counting = getattr(args, "include_num_input_tokens_seen", "no")
        if counting != TOKEN_COUNTING["include_num_input_tokens_seen"]:
            raise ValueError(f"RunMonitor counts the trainer's real tokens: the training config needs "
                             f"include_num_input_tokens_seen='non_padding' (labkit.monitor.TOKEN_COUNTING); got {counting!r}")
        if state.is_world_process_zero and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.logdir))
        self._train_seconds = 0.0
        self._at_last_log = (state.num_input_tokens_seen, 0.0)
        self._mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self._train_seconds += now - self._mark
        self._mark = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._writer is None or not logs:
            return
        step = state.global_step
        if "loss" in logs:
            self._scalar("train/loss", logs["loss"], step)
            self._scalar("train/perplexity", exp_loss(logs["loss"]), step)
            if logs.get("grad_norm") is not None:
                self._scalar("train/grad_norm", logs["grad_norm"], step)
            self._scalar("train/learning_rate", logs["learning_rate"], step)
            tokens, seconds = state.num_input_tokens_seen, self._train_seconds
            self._scalar("train/tokens_seen", tokens, step)
            last_tokens, last_seconds = self._at_last_log
            if seconds > last_seconds:
                self._scalar("train/tokens_per_second", (tokens - last_tokens) / (seconds - last_seconds), step)
            self._at_last_log = (tokens, seconds)
        if "eval_loss" in logs:
            self._scalar("eval/loss", logs["eval_loss"], step)
            self._scalar("eval/perplexity", exp_loss(logs["eval_loss"]), step)
        self._writer.flush()
        self._mark = time.perf_counter()  # logging is not training time

    def on_evaluate(self, args, state, control, **kwargs):
        self._mark = time.perf_counter()  # nor is evaluation

    def on_save(self, args, state, control, **kwargs):
        self._mark = time.perf_counter()  # nor saving a checkpoint

    def on_train_end(self, args, state, control, **kwargs):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, float(value), global_step=step)


def read_scalars(logdir: str | Path) -> pd.DataFrame:
    """Every scalar in the TensorBoard event files under ``logdir``: columns ``run``, ``tag``, ``step``, ``value``,
    ``wall_time`` (seconds since the epoch), sorted by run, tag and step.

    ``run`` is the folder holding the event files, relative to ``logdir`` (``.`` for ``logdir`` itself), as
    TensorBoard names runs. Values come back as TensorBoard stores them: 32-bit floats.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(logdir)
    if not root.is_dir():
        raise FileNotFoundError(f"read_scalars: {root} is not a folder; expected the logdir a RunMonitor wrote to")
    folders = sorted({f.parent for f in root.rglob(EVENT_FILE_GLOB)})
    if not folders:
        raise FileNotFoundError(f"read_scalars: no TensorBoard event files ({EVENT_FILE_GLOB}) under {root}; "
                                f"did the run start training with a RunMonitor({str(root)!r}) callback?")
    rows = []
    for folder in folders:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every value, not a sample
        events.Reload()
        run = folder.relative_to(root).as_posix()
        for tag in events.Tags()["scalars"]:
            rows.extend({"run": run, "tag": tag, "step": e.step, "value": e.value, "wall_time": e.wall_time}
                        for e in events.Scalars(tag))
    return pd.DataFrame(rows, columns=["run", "tag", "step", "value", "wall_time"]).sort_values(
        ["run", "tag", "step"], ignore_index=True)
