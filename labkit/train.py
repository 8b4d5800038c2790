"""Supervised fine-tuning with TRL, configured once for both profiles (CPU/offline or GPU)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

from transformers import EarlyStoppingCallback, PreTrainedModel, PreTrainedTokenizerBase

from labkit.profiles import Profile


_SCRATCH: tempfile.TemporaryDirectory | None = None


def scratch_dir() -> str:
    """A new directory for a trainer's output, inside one that is removed when the process exits."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.TemporaryDirectory(prefix="labkit-sft-")
    return tempfile.mkdtemp(dir=_SCRATCH.name)


def precision_args(profile: Profile) -> dict[str, bool]:
    """The trainer's ``bf16`` / ``fp16`` flags for ``profile.precision``: the one place labkit sets them.

    Both mean autocast over fp32 weights (``labkit.profiles.load_model`` loads fp32), so the optimizer
    updates fp32 master weights; ``fp16`` adds loss scaling. Works on the CPU too (bf16 autocast).
    """
    return {"bf16": profile.precision == "bf16-mixed", "fp16": profile.precision == "fp16-mixed"}


def trainer_defaults(profile: Profile, steps: int, output_dir: str | None = None) -> dict:
    """The arguments every TRL config in labkit shares (``sft_config``, ``labkit.reward.reward_config``,
    ``labkit.preferences.dpo_config``): ``steps`` with 5% warm-up and cosine decay, the profile's batch size and
    sequence length, no weight decay, no checkpoints or reports unless asked, :func:`precision_args`, ``use_cpu``
    on the CPU, activation checkpointing on GPUs only, seeds 0, and a :func:`scratch_dir` without ``output_dir``.
    """
    on_cpu = profile.device == "cpu"
    return dict(
        output_dir=output_dir or scratch_dir(),
        max_steps=steps,
        per_device_train_batch_size=profile.batch_size,
        per_device_eval_batch_size=profile.batch_size,
        max_length=profile.max_seq_len,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.0,
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        report_to="none",
        use_cpu=on_cpu,
        **precision_args(profile),
        gradient_checkpointing=not on_cpu,  # TRL's default is on; the tiny model's activations are small
        dataloader_num_workers=0,
        disable_tqdm=False,  # a progress bar (stderr), not one printed dict per logging step
        seed=0,
        data_seed=0,
    )


def sft_config(profile: Profile, *, kind: str = "full", output_dir: str | None = None, **overrides):
    """A TRL ``SFTConfig`` with this book's defaults for method ``kind`` on ``profile``; ``overrides`` win.

    :func:`trainer_defaults` for the profile's steps, the tuned learning rate of ``kind``
    (``labkit.tuning.learning_rate``), and loss on the answer only (``completion_only_loss`` for
    prompt-completion data; pass ``assistant_only_loss=True`` for chats).
    """
    from trl import SFTConfig

    from labkit.tuning import learning_rate

    defaults = trainer_defaults(profile, overrides.get("max_steps", profile.train_steps), output_dir)
    rate = overrides["learning_rate"] if "learning_rate" in overrides else learning_rate(kind, profile)
    defaults |= dict(learning_rate=rate, completion_only_loss=True)
    return SFTConfig(**(defaults | overrides))


def sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset,
    config,
    *,
    eval_dataset=None,
    early_stopping_patience: int | None = None,
    peft_config=None,
    callbacks=(),
    optimizers=(None, None),
    resume_from_checkpoint: str | bool | None = None,
):
    """Train with TRL's ``SFTTrainer``; returns the trainer (``trainer.state.log_history`` has the curves).

    ``resume_from_checkpoint``: a checkpoint folder, or ``True`` for the newest under ``config.output_dir``
    (``labkit.checkpoints``): weights, optimizer, scheduler, RNG states and the position in the data.

    With ``early_stopping_patience``, training stops after that many evaluations without a lower
    validation loss, and the best checkpoint is loaded back (``config`` must then evaluate and save
    on the same steps). ``optimizers``: ``(optimizer, scheduler)``, either ``None`` for the trainer's own.
    """
    from trl import SFTTrainer

    from labkit.tokenizer import has_generation_markers

    if getattr(config, "assistant_only_loss", False) and not has_generation_markers(tokenizer.chat_template):
        raise ValueError("assistant_only_loss needs a chat template with {% generation %} markers, and this "
                         "tokenizer's has none (hub templates usually do not). Train on prompt-completion rows "
                         "(completion_only_loss), or tokenize with labkit.data.tokenize_dataset, which masks "
                         "assistant replies by their rendered spans under any template.")
    callbacks = list(callbacks)
    if early_stopping_patience is not None:
        if eval_dataset is None or not config.load_best_model_at_end:
            raise ValueError("early stopping needs an eval_dataset and a config with load_best_model_at_end=True")
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config,
                         optimizers=optimizers)
    with labelled_positions_only():
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    remove_training_wrappers(trainer.model)
    trainer.model.eval()
    return trainer


@contextlib.contextmanager
def labelled_positions_only() -> Iterator[bool]:
    """Within the block, TRL's fused LM head scores only the positions that carry a label, on every device.

    TRL 1.16 projects only labelled positions through the LM head where its Triton kernels run (CUDA,
    XPU) and every position elsewhere, which keeps tile shapes fixed for compiling backends. In eager
    PyTorch on a CPU that only costs time: with the loss on answers only, most positions are prompt.
    Loss, gradients and logged metrics are the same either way (``tests/test_train.py``). Yields whether
    the switch was made: ``False`` on a TRL without the private hook, which then runs as it ships.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        trl_utils = None
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield False
        return
    trl_utils._use_triton = lambda device: original(device) or device.type == "cpu"
    try:
        yield True
    finally:
        trl_utils._use_triton = original


def remove_training_wrappers(model) -> int:
    """Give ``model`` back its own ``forward`` after a trainer ran: remove accelerate's mixed-precision wrapper
    and TRL's fused LM head (:func:`remove_fused_forward`); returns how many wrappers were removed.

    With ``bf16``/``fp16`` (:func:`precision_args`), accelerate replaces the trained model's ``forward`` by one
    under autocast and leaves it there: every later forward — evaluation, generation, a copy's — would run in
    16-bit while the untrained model it is compared with runs in fp32 (and, on a CPU without native bf16, an
    order of magnitude slower). ``tests/test_train.py`` checks that nothing is left.
    """
    unwrapped = 0
    for module in model.modules():
        # accelerate keeps the forward it wrapped as _original_forward. (Its own unwrapping follows __wrapped__
        # through every decorator, past transformers' own on the class's forward: not what the model runs.)
        original = module.__dict__.pop("_original_forward", None)
        if original is None:
            continue
        if getattr(original, "__func__", None) is type(module).forward and original.__self__ is module:
            del module.forward  # the class's own forward: no instance attribute needed
        else:
            module.forward = original  # e.g. TRL's fused head, removed below
        unwrapped += 1
    return unwrapped + remove_fused_forward(model)


def remove_fused_forward(model) -> int:
    """Undo TRL's per-instance ``forward`` patch (its fused LM head) on ``model`` and its submodules.

    TRL stores the model's original bound ``forward`` in a closure; a ``copy.deepcopy`` of a patched
    model therefore still runs the *original* model's forward, silently (``tests/test_train.py``).
    After training the patch is not needed. Returns how many modules were restored.
    """
    restored = 0
    for module in model.modules():
        patched = module.__dict__.get("forward")
        code = getattr(getattr(patched, "__func__", None), "__code__", None)
        if code is not None and code.co_name == "_fused_forward":  # functools.wraps renamed it; its code keeps the name
            del module.forward
            restored += 1
    return restored


def loss_curves(trainer) -> dict[str, list[tuple[int, float]]]:
    """(step, loss) pairs of the training and validation losses a trainer logged."""
    history = trainer.state.log_history
    return {
        "train": [(h["step"], h["loss"]) for h in history if "loss" in h],
        "eval": [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h],
    }
