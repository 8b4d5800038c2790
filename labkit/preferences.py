"""Preference tuning with TRL's DPO trainer: pairs from the model's own samples, the run, and drift from the reference."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.dpo import LOSS_TYPES, preference_batch, sequence_logprobs
from labkit.profiles import Profile
from labkit.vocabulary import check_choice

DPO_LEARNING_RATE = 1e-6
""":func:`dpo_config`'s default peak rate: TRL's own ``DPOConfig`` default. Choose yours on validation prompts."""

LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
          "logps/rejected")
"""What :func:`dpo_history` keeps of TRL's per-step log, by TRL's keys."""


@dataclass
class PairReport:
    """What :func:`on_policy_pairs` made of its prompts. Every prompt is counted once: ``prompts`` is
    ``mixed + all_right + all_wrong``, and ``pairs`` is ``mixed`` plus, if the reference stood in, ``all_wrong``."""

    prompts: int
    samples: int
    """Sampled completions in all (``prompts * samples_per_prompt``)."""
    correct_samples: int
    mixed: int
    """Prompts with a right and a wrong sample: one pair each, both answers the model's own."""
    all_right: int
    """Prompts whose samples were all right: no wrong answer to reject, so no pair."""
    all_wrong: int
    """Prompts whose samples were all wrong: a pair only with ``reference_when_all_wrong`` (chosen = the reference)."""
    pairs: int

    def __post_init__(self):
        if self.mixed + self.all_right + self.all_wrong != self.prompts:
            raise ValueError(f"mixed {self.mixed} + all right {self.all_right} + all wrong {self.all_wrong} "
                             f"!= {self.prompts} prompts")
        if self.pairs not in (self.mixed, self.mixed + self.all_wrong):
            raise ValueError(f"{self.pairs} pairs; expected {self.mixed} (mixed) or {self.mixed + self.all_wrong}")


def on_policy_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset,
    *,
    samples_per_prompt: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
    reference_when_all_wrong: bool = False,
    batch_size: int = 64,
):
    """(pairs, :class:`PairReport`): preference pairs from ``model``'s own samples, labelled by the task's verifier.

    ``dataset`` is a ``labkit.tasks.verifiable_tasks(..., fmt="completion")`` dataset (``prompt``, ``answer``,
    ``task``). Each prompt gets ``samples_per_prompt`` sampled completions (pure sampling at ``temperature``: no top-k, top-p or
    repetition penalty, whatever the model's generation config says; seeded by ``seed`` on the model's device), each cut at its first newline, as ``labkit.eval`` scores them, and
    right iff equal to ``answer`` after ``labkit.eval.normalize_answer``. A prompt with a right and a wrong
    sample gives one pair: its first right sample (chosen) and its first wrong one (rejected). With
    ``reference_when_all_wrong``, a prompt with no right sample pairs the reference answer with its first wrong one.

    Pairs are in TRL's standard preference format, as ``labkit.tasks.preference_pairs(fmt="completion")``
    writes them (strings, each answer after a space), with ``task`` and ``chosen_from`` (``sample`` or
    ``reference``) besides ``prompt``, ``chosen``, ``rejected``.
    """
    from datasets import Dataset

    from labkit.eval import normalize_answer
    from labkit.generation import generate_batch

    if samples_per_prompt < 2 and not reference_when_all_wrong:
        raise ValueError(f"samples_per_prompt must be >= 2 to find a right and a wrong sample, got {samples_per_prompt}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature}")
    missing = {"prompt", "answer", "task"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"dataset has no {sorted(missing)}; expected labkit.tasks.verifiable_tasks(..., fmt='completion')")
    prompts, answers, task_names = dataset["prompt"], dataset["answer"], dataset["task"]
    texts = [p for p in prompts for _ in range(samples_per_prompt)]  # prompt-major: prompt i's samples are adjacent
    torch.manual_seed(seed)  # seeds the generators of every device
    samples = []
    for i in range(0, len(texts), batch_size):
        samples += generate_batch(model, tokenizer, texts[i : i + batch_size], max_new_tokens=max_new_tokens,
                                  do_sample=True, temperature=temperature, top_k=0, top_p=1.0, repetition_penalty=1.0)
    samples = [s.strip().split("\n", 1)[0].strip() for s in samples]
    rows, counts = [], dict(mixed=0, all_right=0, all_wrong=0, correct_samples=0)
    for i, (prompt, answer, task) in enumerate(zip(prompts, answers, task_names)):
        own = samples[i * samples_per_prompt : (i + 1) * samples_per_prompt]
        right = [s for s in own if normalize_answer(s) == normalize_answer(answer)]
        wrong = [s for s in own if normalize_answer(s) != normalize_answer(answer)]
        counts["correct_samples"] += len(right)
        kind = "mixed" if right and wrong else "all_right" if right else "all_wrong"
        counts[kind] += 1
        if kind == "mixed" or (kind == "all_wrong" and reference_when_all_wrong):
            chosen, source = (right[0], "sample") if right else (answer, "reference")
            # " answer": the completion format's answer follows the prompt after a space (labkit.tasks)
            rows.append({"task": task, "prompt": prompt, "chosen": f" {chosen}", "rejected": f" {wrong[0]}",
                         "chosen_from": source})
    report = PairReport(prompts=len(prompts), samples=len(samples), pairs=len(rows), **counts)
    columns = ("task", "prompt", "chosen", "rejected", "chosen_from")
    return Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in columns}), report


def _completion_rows(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], completions: Sequence[str]):
    """:data:`labkit.dpo.Batch` rows of (prompt, completion) as TRL cuts them (EOS appended): the chosen half of
    :func:`labkit.dpo.preference_batch` with the completion on both sides."""
    rows = [{"prompt": p, "chosen": c, "rejected": c} for p, c in zip(prompts, completions)]
    batch = preference_batch(tokenizer, rows)
    return {k: v[: len(rows)] for k, v in batch.items()}


@torch.no_grad()
def kl_to_reference(
    policy: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str], completions: Sequence[str], *, batch_size: int = 16,
) -> float:
    """Mean per-token KL(policy ‖ reference) in nats, on fixed completions.

    At every completion token t of every (prompt, completion) — the completion followed by EOS, cut as TRL
    cuts it (:func:`labkit.dpo.tokenize_pair`) — the exact KL between the two next-token distributions,
    Σ_v π(v | y<t) (log π(v | y<t) − log π_ref(v | y<t)), summed over the whole vocabulary; then the mean
    over all completion tokens. The texts are fixed (not sampled from the policy), so two policies are
    compared at the same positions; the value is 0 exactly when both predict alike there.
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"need as many completions as prompts, at least one; got {len(prompts)} and {len(completions)}")
    total, tokens = 0.0, 0
    device = next(policy.parameters()).device
    for i in range(0, len(prompts), batch_size):
        batch = _completion_rows(tokenizer, prompts[i : i + batch_size], completions[i : i + batch_size])
        ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        predicts = batch["completion_mask"][:, 1:].to(device).bool()  # (B, T-1): position t-1 predicts token t
        logp, logq = (F.log_softmax(m(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float(), -1)
                      for m in (policy, reference))  # (B, T-1, V); both models on one device
        per_position = (logp.exp() * (logp - logq)).sum(-1)  # (B, T-1)
        total += per_position[predicts].sum().item()
        tokens += int(predicts.sum())
    return total / tokens


@torch.no_grad()
def pair_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs, *, batch_size: int = 16):
    """(chosen, rejected): each pair's summed completion log-probabilities under ``model``, as TRL logs ``logps/*``."""
    rows = list(pairs)
    out = []
    for i in range(0, len(rows), batch_size):
        out.append(torch.stack(sequence_logprobs(model, preference_batch(tokenizer, rows[i : i + batch_size])).cpu().chunk(2)))
    chosen, rejected = torch.cat(out, dim=1)  # (2, N) -> two (N,)
    return chosen, rejected


def logprob_drift(policy: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs) -> dict[str, float]:
    """Mean summed log-probability of the chosen and the rejected answers before (``reference``) and after
    (``policy``) training, their changes (where DPO's margin came from), and ``reward accuracy``: the share of
    pairs whose chosen answer gained more log-probability than the rejected one, TRL's ``rewards/accuracies``
    (the sign of β(Δ chosen − Δ rejected) does not depend on β; a tie is a miss)."""
    before, after = pair_logprobs(reference, tokenizer, pairs), pair_logprobs(policy, tokenizer, pairs)
    drift = {}
    for side, b, a in zip(("chosen", "rejected"), before, after):
        drift |= {f"{side} before": b.mean().item(), f"{side} after": a.mean().item(), f"{side} change": (a - b).mean().item()}
    chosen_gain, rejected_gain = (a - b for a, b in zip(after, before))
    return drift | {"reward accuracy": (chosen_gain > rejected_gain).float().mean().item()}


def dpo_config(profile: Profile, *, beta: float = 0.1, loss_type: str = "sigmoid", rpo_alpha: float | None = None,
               output_dir: str | None = None, **overrides):
    """A TRL ``DPOConfig`` with this book's defaults on ``profile``; ``overrides`` win.

    ``labkit.train.trainer_defaults`` for the profile's steps, :data:`DPO_LEARNING_RATE`, and a log entry
    every step (for :func:`dpo_history`).
    ``loss_type`` is one of ``labkit.dpo.LOSS_TYPES``. ``rpo_alpha``: add α times the mean NLL of the chosen
    answers' tokens (RPO, Pang et al. 2024): TRL 1.16 has no ``rpo_alpha`` field and writes it as the loss
    list ``[loss_type, "sft"]`` with ``loss_weights`` ``[1, α]``.
    """
    from trl import DPOConfig

    from labkit.train import trainer_defaults

    check_choice("loss_type", loss_type, LOSS_TYPES)
    if rpo_alpha is not None and not rpo_alpha > 0:
        raise ValueError(f"rpo_alpha must be > 0 (or None for no SFT term), got {rpo_alpha}")
    defaults = trainer_defaults(profile, overrides.get("max_steps", profile.train_steps), output_dir)
    defaults |= dict(
        learning_rate=DPO_LEARNING_RATE,
        beta=beta,
        loss_type=[loss_type] if rpo_alpha is None else [loss_type, "sft"],
        loss_weights=None if rpo_alpha is None else [1.0, float(rpo_alpha)],
        logging_steps=1,
    )
    return DPOConfig(**(defaults | overrides))


def train_dpo(policy: PreTrainedModel, reference: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase, pairs,
              config, *, callbacks=()):
    """Train ``policy`` in place with TRL's ``DPOTrainer`` against ``reference``; returns the trainer.

    ``reference=None`` freezes a copy of ``policy`` as it is now (TRL itself would reload the model's hub
    id, which is not the fine-tuned policy). On the CPU, TRL's fused LM head scores only the answers'
    positions, as it does on GPUs (``labkit.train.labelled_positions_only``). Afterwards both models are
    back in eval mode with the trainer's wrappers removed (``labkit.train.remove_training_wrappers``), so
    they can be copied and scored; :func:`dpo_history` reads the curves from ``trainer.state.log_history``.
    """
    from trl import DPOTrainer

    from labkit.train import labelled_positions_only, remove_training_wrappers

    if reference is None:
        reference = copy.deepcopy(policy)
    reference.requires_grad_(False)
    policy.requires_grad_(True)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config, train_dataset=pairs,
                         processing_class=tokenizer, callbacks=list(callbacks))
    with labelled_positions_only():
        trainer.train()
    for model in (trainer.model, trainer.ref_model):
        remove_training_wrappers(model)
        model.eval()
    return trainer


def dpo_history(trainer) -> pd.DataFrame:
    """The per-step log of a DPO run: columns :data:`LOGGED` (TRL's keys), indexed by ``step``."""
    rows = [{"step": h["step"], **{k: h[k] for k in LOGGED}} for h in trainer.state.log_history if "rewards/margins" in h]
    return pd.DataFrame(rows, columns=["step", *LOGGED]).set_index("step")
