"""Watching a run for overfitting (validation loss past its minimum) and forgetting (held-out loss above the base's)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from transformers import TrainerCallback

from labkit.check.finding import Finding


def overfitting(eval_curve: Sequence[tuple[int, float]], *, patience: int, min_delta: float = 0.0) -> list[Finding]:
    """A finding once the validation loss has gone ``patience`` evaluations without falling more than ``min_delta``
    below its best -- the rule of transformers' ``EarlyStoppingCallback`` -- naming the best step to keep.

    ``eval_curve``: (step, validation loss) pairs in order (``labkit.train.loss_curves(trainer)["eval"]``).
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1 evaluation, got {patience}")
    if not eval_curve:
        return []
    best_step, best_loss = eval_curve[0]
    since = 0
    for step, loss in eval_curve[1:]:
        if loss < best_loss - min_delta:
            best_step, best_loss, since = step, loss, 0
        else:
            since += 1
    if since < patience:
        return []
    last_step, last_loss = eval_curve[-1]
    return [Finding("overfitting", "warning",
                    f"validation loss: best {best_loss:.4f} at step {best_step}, then {since} evaluations without improving "
                    f"by more than {min_delta} (now {last_loss:.4f} at step {last_step}); expected it to keep falling "
                    f"within patience={patience}.",
                    f"stop and keep the step-{best_step} weights: labkit.train.sft's early_stopping_patience with "
                    "load_best_model_at_end=True does both")]


def forgetting_above(tuned_loss: float, base_loss: float, *, threshold: float) -> list[Finding]:
    """A finding when the held-out loss rose more than ``threshold`` nats/token over the base model's
    (``labkit.eval.heldout.forgetting``: both measured with ``labkit.eval.heldout.heldout_loss``)."""
    from labkit.eval.heldout import forgetting

    if threshold < 0:
        raise ValueError(f"threshold must be >= 0 nats/token, got {threshold}")
    rise = forgetting(tuned_loss, base_loss)
    if rise <= threshold:
        return []
    return [Finding("forgetting", "warning",
                    f"held-out loss {tuned_loss:.4f} vs the base model's {base_loss:.4f}: it rose {rise:.4f} nats/token, "
                    f"expected at most {threshold}.",
                    "stop earlier or lower the learning rate; if the task needs the steps, train fewer weights (LoRA) "
                    "or mix general text into the training data")]


class PitfallMonitor(TrainerCallback):
    """At every evaluation: :func:`overfitting` on the validation curve and, with ``heldout``, :func:`forgetting_above`;
    stops training at the first finding (``stop=False`` only records). Findings collect in :attr:`findings`.

    ``heldout``: the model's held-out loss, e.g. ``lambda m: heldout_loss(m, tokenizer, max_seq_len=...)``;
    ``base_loss``: the same measured on the base model before training.
    """

    def __init__(self, *, patience: int | None = None, min_delta: float = 0.0,
                 heldout: Callable[[object], float] | None = None, base_loss: float | None = None,
                 threshold: float | None = None, stop: bool = True):
        if patience is None and heldout is None:
            raise ValueError("PitfallMonitor watches nothing: expected patience (overfitting) or heldout (forgetting)")
        if heldout is not None and (base_loss is None or threshold is None):
            raise ValueError("PitfallMonitor: heldout needs base_loss and threshold (nats/token) to compare with")
        self.patience, self.min_delta, self.stop = patience, min_delta, stop
        self.heldout, self.base_loss, self.threshold = heldout, base_loss, threshold
        self.eval_curve: list[tuple[int, float]] = []
        """(step, validation loss) at each evaluation."""
        self.heldout_curve: list[tuple[int, float]] = []
        """(step, held-out loss) at each evaluation, with ``heldout``."""
        self.findings: list[Finding] = []

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        found = []
        if self.patience is not None and metrics and "eval_loss" in metrics:
            self.eval_curve.append((state.global_step, metrics["eval_loss"]))
            found += overfitting(self.eval_curve, patience=self.patience, min_delta=self.min_delta)
        if self.heldout is not None and model is not None:
            training = model.training
            loss = self.heldout(model.eval())
            model.train(training)
            self.heldout_curve.append((state.global_step, loss))
            found += forgetting_above(loss, self.base_loss, threshold=self.threshold)
        self.findings += [f for f in found if f.check not in {g.check for g in self.findings}]
        if found and self.stop:
            control.should_training_stop = True
