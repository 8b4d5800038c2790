"""Bad batches, gradient-norm spikes and what clipping does about them.

A single batch of garbage (mislabelled rows, a broken shard, a tokenizer mismatch) produces a loss far
above the rest and a gradient far longer. AdamW's first moment carries a tenth of it into the next
steps, and its second moment remembers its square for hundreds of steps, shrinking the updates that
follow. Clipping the global gradient norm (``labkit.precision.train_steps``' ``max_grad_norm``)
bounds what such a batch can do; it does not change where a learning rate that is simply too high leads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from labkit.accumulation import IGNORE_INDEX, Batch, predicted_tokens, summed_token_loss


def scramble_answers(batch: Batch, *, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A copy of ``batch`` whose answer tokens (labels not ``IGNORE_INDEX``) are random token ids.

    The prompts stay; ``input_ids`` and ``labels`` change together, as in a shard of mislabelled rows.
    """
    generator = torch.Generator().manual_seed(seed)
    answer = batch["labels"] != IGNORE_INDEX
    noise = torch.randint(0, vocab_size, batch["labels"].shape, generator=generator)
    scrambled = dict(batch)
    scrambled["input_ids"] = torch.where(answer, noise, batch["input_ids"])
    scrambled["labels"] = torch.where(answer, noise, batch["labels"])
    return scrambled


def with_bad_batches(batches: Sequence[Batch], at: Sequence[int], *, vocab_size: int, seed: int = 0) -> list[Batch]:
    """``batches`` with the ones at positions ``at`` replaced by :func:`scramble_answers` of themselves."""
    bad = sorted(set(at))
    if bad and not 0 <= bad[0] <= bad[-1] < len(batches):
        raise ValueError(f"bad-batch positions {bad} must lie in 0..{len(batches) - 1}")
    return [scramble_answers(b, vocab_size=vocab_size, seed=seed + i) if i in bad else b for i, b in enumerate(batches)]


@torch.no_grad()
def token_loss(model: torch.nn.Module, batches: Sequence[Batch]) -> float:
    """Mean next-token loss over every predicted token of ``batches`` (nats/token): the validation loss."""
    tokens = sum(predicted_tokens(b) for b in batches)
    if tokens == 0:
        raise ValueError("the batches hold no predicted token (every label is IGNORE_INDEX)")
    return float(sum(summed_token_loss(model, b).item() for b in batches) / tokens)


def clipped_share(history: Sequence[dict], max_grad_norm: float) -> float:
    """Share of the steps of a ``train_steps`` history whose gradient norm exceeded ``max_grad_norm``."""
    if not history:
        raise ValueError("the history is empty")
    return sum(h["grad_norm"] > max_grad_norm for h in history) / len(history)
