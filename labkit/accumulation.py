"""Gradient accumulation: k micro-batches that give one large batch's gradient, and the normalisation that breaks it.

A trainer that accumulates calls ``backward`` once per micro-batch and steps once. The sum of the
micro-batch gradients equals the large batch's gradient only if each micro-batch's loss is its
*summed* token loss divided by the token count of the *whole* accumulated batch. Dividing each
micro-batch's mean loss by k instead (the mean of means) weights a token in a short micro-batch more
than one in a long micro-batch: with variable-length sequences the gradient is wrong. transformers
fixed its Trainer in 4.46 by passing ``num_items_in_batch`` (the accumulated token count) to the loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from labkit.data.masks import IGNORE_INDEX

NORMALISATIONS = ("tokens", "mean_of_means")
"""``tokens``: every micro-batch's summed loss over the accumulated token count (right);
``mean_of_means``: every micro-batch's mean loss over k (wrong when micro-batches differ in tokens)."""

Batch = Mapping[str, torch.Tensor]
"""``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE_INDEX`` where the loss skips), (batch, seq)."""


def predicted_tokens(batch: Batch) -> int:
    """Tokens the loss counts: labels after the one-position shift that are not ``IGNORE_INDEX``."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def summed_token_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy summed over the predicted tokens of ``batch`` (a scalar with a graph)."""
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    labels = batch["labels"].to(device)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter's ``.grad`` that is set, by parameter name."""
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def batch_gradients(model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """Gradients of the mean token loss over one (large) batch: the reference accumulation must reproduce."""
    model.zero_grad(set_to_none=True)
    (summed_token_loss(model, batch) / predicted_tokens(batch)).backward()
    return gradients(model)


def accumulated_gradients(model: torch.nn.Module, micro_batches: Sequence[Batch], *,
                          normalisation: str = "tokens") -> dict[str, torch.Tensor]:
    """Gradients after one ``backward`` per micro-batch, as a trainer accumulates them before its step."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {', '.join(NORMALISATIONS)}; got {normalisation!r}")
    counts = [predicted_tokens(b) for b in micro_batches]
    if sum(counts) == 0 or (normalisation == "mean_of_means" and 0 in counts):  # a mean over no token is 0/0
        empty = counts.index(0)
        raise ValueError(f"micro-batch {empty} has no predicted token (every label is {IGNORE_INDEX}); "
                         f"its mean loss is undefined")
    model.zero_grad(set_to_none=True)
    for batch, count in zip(micro_batches, counts):
        loss = summed_token_loss(model, batch)
        divisor = sum(counts) if normalisation == "tokens" else count * len(micro_batches)
        (loss / divisor).backward()
    return gradients(model)


def split_batch(batch: Batch, k: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` cut into ``k`` micro-batches of consecutive rows (the first ones one row longer if needed)."""
    rows = batch["input_ids"].shape[0]
    if not 1 <= k <= rows:
        raise ValueError(f"k must be between 1 and the batch's {rows} rows; got {k}")
    return [{key: part for key, part in zip(batch, parts)}
            for parts in zip(*(torch.tensor_split(value, k) for value in batch.values()))]


def gradient_error(got: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """Relative L2 error of all gradients together: ||got - reference|| / ||reference||."""
    if set(got) != set(reference):
        raise ValueError(f"different parameters: {sorted(set(got) ^ set(reference))[:5]}")
    diff = sum(float((got[n].double() - reference[n].double()).pow(2).sum()) for n in reference)
    norm = sum(float(reference[n].double().pow(2).sum()) for n in reference)
    return (diff / norm) ** 0.5
