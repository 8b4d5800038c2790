"""DPO from scratch: preference batches as TRL 1.16 builds them, sequence log-probabilities, the loss, and TRL's metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from labkit.data.masks import IGNORE_INDEX
from labkit.vocabulary import check_choice

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
"""The loss types labkit implements, by TRL's ``DPOConfig.loss_type`` names and with TRL 1.16's formulas."""

Batch = Mapping[str, torch.Tensor]
"""``input_ids``, ``attention_mask``, ``completion_mask`` (1 on completion tokens), (2B, T): the B chosen
rows first, then the B rejected rows, right-padded: the layout of TRL's ``DataCollatorForPreference``."""


@dataclass
class DPOSpec:
    beta: float = 0.1
    """β: the weight of the KL penalty to the reference; larger keeps the policy closer. IPO's τ."""
    loss_type: str = "sigmoid"
    """One of :data:`LOSS_TYPES`."""
    label_smoothing: float = 0.0
    """``robust`` only: the probability ε that a preference label is flipped, in [0, 0.5). TRL 1.16 ignores it
    for the other loss types (its pre-1.0 ``sigmoid`` used it as conservative DPO), so it must stay 0 there."""

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        if self.loss_type == "robust" and not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5) for loss_type 'robust', got {self.label_smoothing}")
        if self.loss_type != "robust" and self.label_smoothing != 0:
            raise ValueError(f"label_smoothing is used only by loss_type 'robust'; got {self.label_smoothing} with "
                             f"{self.loss_type!r}, where TRL 1.16 ignores it; expected 0.0")


def _common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    n = 0
    while n < min(len(ids), len(other)) and ids[n] == other[n]:
        n += 1
    return n


def tokenize_pair(tokenizer: PreTrainedTokenizerBase, row: Mapping) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids of a ``prompt``/``chosen``/``rejected`` row, as TRL 1.16 cuts them.

    Prompt and prompt + completion are tokenized whole (through the chat template for lists of messages;
    a plain-text completion first gets the tokenizer's EOS appended), and each completion starts where
    both tokenizations of the prompt agree, so tokens that merge across the boundary belong to the completion.
    """
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        raise ValueError(f"row has no {', '.join(map(repr, missing))}; expected the keys prompt, chosen, rejected")
    if isinstance(row["prompt"], list):  # conversational: lists of {"role", "content"} messages
        def ids(messages, **kwargs):
            return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]

        prompt = ids(row["prompt"], add_generation_prompt=True)
        full = [ids(row["prompt"] + row[k]) for k in ("chosen", "rejected")]
    else:
        eos = tokenizer.eos_token
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = [tokenizer(row["prompt"] + row[k] + ("" if row[k].endswith(eos) else eos))["input_ids"]
                for k in ("chosen", "rejected")]
    n_prompt = min(_common_prefix_length(prompt, f) for f in full)
    return prompt[:n_prompt], full[0][n_prompt:], full[1][n_prompt:]


def preference_batch(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """One :data:`Batch` of ``prompt``/``chosen``/``rejected`` rows (dicts, or a ``datasets.Dataset``).

    Equal to what TRL 1.16's ``DPOTrainer`` feeds its loss for the same rows, without truncation.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("no rows; expected at least one prompt/chosen/rejected row")
    sequences, masks = [[], []], [[], []]  # [chosen, rejected]
    for i, row in enumerate(rows):
        prompt, *completions = tokenize_pair(tokenizer, row)
        for side, (name, completion) in enumerate(zip(("chosen", "rejected"), completions)):
            if not completion:
                raise ValueError(f"row {i}: the {name} completion has no token of its own after the prompt")
            sequences[side].append(prompt + completion)
            masks[side].append([0] * len(prompt) + [1] * len(completion))
    sequences, masks = sequences[0] + sequences[1], masks[0] + masks[1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(map(len, sequences))
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)  # (2B, T)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, (ids, mask) in enumerate(zip(sequences, masks)):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention_mask[r, : len(ids)] = 1
        completion_mask[r, : len(ids)] = torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def sequence_logprobs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Sum over each row's completion tokens of log p(token | every token before it); shape ``(rows,)``.

    Prompt and padding (``completion_mask == 0``) are left out. The result keeps the model's graph: wrap the
    call in ``torch.no_grad()`` for a reference model.
    """
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    labels = input_ids.masked_fill(batch["completion_mask"].to(device) == 0, IGNORE_INDEX)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
    token_nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                ignore_index=IGNORE_INDEX, reduction="none")  # (rows * (T-1),); 0 where skipped
    return -token_nll.view(labels.size(0), -1).sum(dim=1)


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """β · (log π(y|x) − log π_ref(y|x)), detached: DPO's reward (Rafailov et al. 2023, eq. 5) up to a term
    that depends on the prompt only and cancels between two answers to it."""
    return beta * (policy_logps - ref_logps).detach()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards), each of shape ``(B,)``, with TRL 1.16's formulas.

    With log-ratios ``c = log π(y_w|x) − log π_ref(y_w|x)`` and ``r`` the same for the rejected answer:

    - ``sigmoid``: −log σ(β(c − r)), DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7).
    - ``ipo``: (c/n_w − r/n_l − 1/(2β))², IPO (Azar et al. 2023, "A General Theoretical Paradigm to
      Understand Learning from Human Preferences", eq. 17, β as τ). TRL divides each log-ratio by its
      completion's token count (``chosen_lengths``, ``rejected_lengths``; required here).
    - ``hinge``: max(0, 1 − β(c − r)), the hinge loss of SLiC (Zhao et al. 2023, "SLiC-HF: Sequence
      Likelihood Calibration with Human Feedback") on the log-ratio margin, with β the inverse of its margin.
    - ``robust``: (−(1−ε) log σ(β(c − r)) + ε log σ(−β(c − r))) / (1 − 2ε), unbiased under labels flipped
      with probability ε = ``label_smoothing`` (Chowdhury et al. 2024, "Provably Robust DPO").

    The rewards are :func:`implicit_rewards` (detached, for metrics).
    """
    spec = DPOSpec(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    shapes = {t.shape for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)}
    if len(shapes) != 1:
        raise ValueError(f"the four log-probability tensors must have one shape (B,); got {sorted(map(tuple, shapes))}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    margin = beta * (chosen_logratios - rejected_logratios)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(margin)
    elif loss_type == "hinge":
        losses = torch.relu(1 - margin)
    elif loss_type == "robust":
        eps = spec.label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(margin) + eps * F.logsigmoid(-margin)) / (1 - 2 * eps)
    else:  # ipo: a squared loss on summed log-ratios would grow with the length, so TRL averages per token
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type 'ipo' divides each log-ratio by its completion's token count, as TRL does; "
                             "pass chosen_lengths and rejected_lengths")
        per_token = (chosen_logratios / chosen_lengths.to(chosen_logratios).clamp(min=1.0)
                     - rejected_logratios / rejected_lengths.to(rejected_logratios).clamp(min=1.0))
        losses = (per_token - 1 / (2 * beta)) ** 2
    return (losses, implicit_rewards(policy_chosen_logps, ref_chosen_logps, beta),
            implicit_rewards(policy_rejected_logps, ref_rejected_logps, beta))


def dpo_metrics(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
    policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
) -> dict[str, float]:
    """The preference metrics TRL's DPO trainer logs, as batch means, by TRL's keys.

    ``rewards/accuracies`` is the fraction of pairs whose chosen reward is strictly larger (a tie is a miss);
    ``rewards/margins`` the mean of chosen − rejected reward; ``logps/*`` the policy's summed log-probabilities.
    """
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": policy_chosen_logps.detach().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().mean().item(),
    }


def dpo_batch_loss(
    policy: torch.nn.Module, reference: torch.nn.Module, batch: Batch, spec: DPOSpec
) -> tuple[torch.Tensor, dict[str, float]]:
    """(mean loss over the B pairs of ``batch``, with the policy's graph; :func:`dpo_metrics`): one DPO step's forward."""
    policy_chosen, policy_rejected = sequence_logprobs(policy, batch).chunk(2)  # (B,) each
    with torch.no_grad():
        ref_chosen, ref_rejected = sequence_logprobs(reference, batch).chunk(2)
    chosen_lengths, rejected_lengths = batch["completion_mask"].sum(dim=1).chunk(2)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=spec.beta, loss_type=spec.loss_type,
        label_smoothing=spec.label_smoothing, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    return losses.mean(), dpo_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected)
