"""Reward models: a causal LM turned into a one-output sequence classifier, trained on preference pairs with TRL."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.profiles import Profile


def reward_model_from(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0) -> PreTrainedModel:
    """A sequence classifier with one output (the reward), whose backbone is a copy of causal LM ``lm``'s.

    The LM is saved to a temporary folder and loaded back by ``AutoModelForSequenceClassification`` with
    ``num_labels=1``: every weight but the LM head is kept, and a new linear head ``score`` (hidden size -> 1,
    drawn with ``seed``) reads the hidden state of each sequence's last non-padding token. Weights are fp32
    (16-bit profiles train them under autocast, ``labkit.train.precision_args``), on ``lm``'s device, in eval
    mode. The tokenizer needs a padding token (one without pads with its end-of-sequence token, as
    ``labkit.profiles.load_model`` sets it); the model's config gets its id, which is how the classifier finds
    each row's last real token.
    """
    from contextlib import nullcontext

    from transformers import AutoModelForSequenceClassification

    try:  # TRL's own context for this load: "score.weight newly initialized" and "lm_head unused" are the point
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:
        suppress_seqcls_warning = nullcontext

    if hasattr(lm, "peft_config"):
        raise TypeError("reward_model_from needs a plain causal LM, got a peft model; merge its adapter first "
                        "(model.merge_and_unload())")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a padding nor an end-of-sequence token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    with tempfile.TemporaryDirectory(prefix="labkit-reward-") as folder:
        lm.save_pretrained(folder)
        with torch.random.fork_rng(devices=[]), suppress_seqcls_warning():  # the caller's RNG state is left as it was
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(lm.device).eval()


def reward_config(profile: Profile, *, output_dir: str | None = None, **overrides):
    """A TRL ``RewardConfig`` with this book's defaults on ``profile``; ``overrides`` win.

    ``labkit.train.trainer_defaults`` for the profile's ``train_steps`` (``batch_size`` pairs per step;
    TRL drops pairs longer than ``max_seq_len``) and the recorded full fine-tuning rate
    (``labkit.tuning.learning_rate``).
    """
    from trl import RewardConfig

    from labkit.train import trainer_defaults
    from labkit.tuning import learning_rate

    defaults = trainer_defaults(profile, overrides.get("max_steps", profile.train_steps), output_dir)
    defaults["learning_rate"] = learning_rate("full", profile)
    return RewardConfig(**(defaults | overrides))


def train_reward_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train_dataset, config, *,
                       eval_dataset=None, callbacks=()):
    """Train with TRL's ``RewardTrainer`` on ``prompt``/``chosen``/``rejected`` rows; returns the trainer.

    The loss is Bradley–Terry's: ``-log sigmoid(r(chosen) - r(rejected))`` averaged over the pairs.
    ``trainer.model`` is the trained reward model, left in eval mode; ``trainer.state.log_history`` holds
    the loss and TRL's pair ``accuracy`` and ``margin`` per logging step.
    """
    from trl import RewardTrainer

    from labkit.train import remove_training_wrappers

    if getattr(model.config, "num_labels", None) != 1:
        raise ValueError(f"the reward model needs one output (num_labels=1), got {getattr(model.config, 'num_labels', None)}; "
                         "build it with reward_model_from")
    missing = {"chosen", "rejected"} - set(train_dataset.column_names)
    if missing:
        raise ValueError(f"train_dataset lacks column(s) {sorted(missing)}; it has {train_dataset.column_names}, "
                         "expected prompt (optional), chosen, rejected")
    trainer = RewardTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer, callbacks=list(callbacks))
    trainer.train()
    remove_training_wrappers(trainer.model)
    trainer.model.eval()
    return trainer


def sequence_ids(tokenizer: PreTrainedTokenizerBase, prompt, completion) -> list[int]:
    """The token ids TRL 1.16's ``RewardTrainer`` scores for one (prompt, completion).

    Standard rows (strings): ``tokenizer(prompt + completion + eos)``, the end-of-sequence token appended
    unless the completion ends with it. Conversational rows (lists of messages): the chat template over
    ``prompt + completion``.
    """
    if isinstance(prompt, str) and isinstance(completion, str):
        eos = tokenizer.eos_token
        text = prompt + (completion if completion.endswith(eos) else completion + eos)
        return tokenizer(text)["input_ids"]
    if isinstance(prompt, list) and isinstance(completion, list):
        return tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    raise TypeError(f"prompt and completion must both be strings (standard format) or both lists of messages "
                    f"(conversational); got {type(prompt).__name__} and {type(completion).__name__}")


@torch.no_grad()
def reward_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence, completions: Sequence,
                  *, batch_size: int = 16) -> torch.Tensor:
    """The reward of each (prompt, completion), as TRL's ``RewardTrainer`` computes it: shape ``(N,)``, fp32, on the CPU.

    Sequences are tokenized by :func:`sequence_ids` and right-padded as TRL's collator pads them; the forward
    runs on ``model.device`` in the model's own precision. Nothing is cut: TRL drops pairs longer than its
    ``max_length`` instead.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if getattr(model.config, "pad_token_id", None) is None:
        raise ValueError("model.config.pad_token_id is not set: the classifier cannot find each row's last token "
                         "(build the model with reward_model_from)")
    pad = model.config.pad_token_id
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = [sequence_ids(tokenizer, p, c) for p, c in
                zip(prompts[start : start + batch_size], completions[start : start + batch_size])]
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention_mask[r, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                       use_cache=False).logits  # (B, 1)
        out.append(logits.squeeze(-1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _as_scores(values) -> torch.Tensor:
    """Scores (a tensor on any device, an array, a Series or a list) as a flat fp64 CPU tensor."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).flatten()
    return torch.from_numpy(np.asarray(values, dtype=np.float64)).flatten()


def pair_accuracy(chosen_scores, rejected_scores, *, confidence: float = 0.95) -> dict[str, float]:
    """How often the chosen completion scores higher: ``wins / n`` with a Wilson interval; ties and losses counted.

    A tie (equal scores) is not a win, as in TRL's logged ``accuracy``. Keys: ``n``, ``wins``, ``ties``,
    ``losses``, ``accuracy``, ``ci_low``, ``ci_high``. The interval assumes independent pairs (one per prompt).
    """
    from labkit.eval import wilson_interval

    chosen, rejected = _as_scores(chosen_scores), _as_scores(rejected_scores)
    if chosen.shape != rejected.shape:
        raise ValueError(f"{chosen.numel()} chosen scores for {rejected.numel()} rejected ones")
    if chosen.numel() == 0:
        raise ValueError("no pairs to score")
    if torch.isnan(chosen).any() or torch.isnan(rejected).any():
        raise ValueError("scores contain NaN")
    wins, ties = int((chosen > rejected).sum()), int((chosen == rejected).sum())
    n = chosen.numel()
    low, high = wilson_interval(wins, n, confidence)
    return {"n": n, "wins": wins, "ties": ties, "losses": n - wins - ties, "accuracy": wins / n,
            "ci_low": low, "ci_high": high}


def reward_function(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 16) -> Callable:
    """The reward model as a reward function with TRL GRPO's signature: ``f(prompts=..., completions=..., **kwargs)``.

    Returns one float per completion (:func:`reward_scores`); extra dataset columns GRPO passes are ignored.
    The function's ``__name__`` is ``learned_reward``, the name GRPO logs its rewards under.
    """
    def learned_reward(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        scores = reward_scores(model, tokenizer, list(prompts), list(completions), batch_size=batch_size)
        return [float(s) for s in scores]

    return learned_reward


def auc(positive_scores, negative_scores) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative, ties counting half."""
    pos, neg = _as_scores(positive_scores), _as_scores(negative_scores)
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"need positives and negatives, got {pos.numel()} and {neg.numel()}")
    if torch.isnan(pos).any() or torch.isnan(neg).any():
        raise ValueError("scores contain NaN")
    diff = pos[:, None] - neg[None, :]  # (P, N)
    return ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
