"""Token-weighted perplexity with sliding-window evaluation for texts longer than the context."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _windows(n_ids: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, stop, n_new) windows over ids ``[0, n_ids)`` where id 0 is context only.

    The model reads ids ``[start, stop - 1)`` and predicts ids ``[start + 1, stop)``; only the last
    ``n_new`` predictions are scored, so every id after the first is scored exactly once. With
    ``stride == max_length`` windows share no scored token (fastest); a smaller stride gives every
    scored token at least ``max_length - stride`` tokens of context.
    """
    out = []
    for first in range(1, n_ids, stride):  # first target id of this window
        stop = min(first + stride, n_ids)
        start = max(0, stop - 1 - max_length)
        out.append((start, stop, stop - first))
    return out


@torch.no_grad()
def negative_log_likelihood(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> tuple[float, int]:
    """Total NLL (nats) of every predicted token of ``texts`` and how many tokens were predicted.

    Each text is scored on its own, every one of its tokens exactly once.
    """
    max_length = max_length or model.config.max_position_embeddings
    stride = stride or max_length
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in (0, max_length={max_length}], got {stride}")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Documents were separated by end-of-text in pretraining, so (like lm-evaluation-harness) the
    # first token of a text is predicted from a BOS -- or, lacking one, an EOS -- token.
    prefix = [t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None][:1]
    rows: list[tuple[list[int], int]] = []  # (window ids, number of scored predictions at its end)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}; expected str")
        ids = prefix + tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        for start, stop, n_new in _windows(len(ids), max_length, stride):
            rows.append((ids[start:stop], n_new))
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        width = max(len(ids) for ids, _ in chunk) - 1
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.full((len(chunk), width), -100, dtype=torch.long)  # (B, T)
        for r, (ids, n_new) in enumerate(chunk):
            n = len(ids) - 1
            input_ids[r, :n] = torch.tensor(ids[:-1])
            attention[r, :n] = 1
            targets[r, n - n_new : n] = torch.tensor(ids[len(ids) - n_new :])
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        logits = logits[:, -width:]  # prompt tuning prepends learned positions; score the text's own
        targets = targets.to(device)
        total += torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        count += int((targets != -100).sum())
    model.train(was_training)
    return total, count


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
) -> float:
    """exp(total NLL / total predicted tokens) over all ``texts`` -- weighted by tokens, not by text.

    Averaging per-text perplexities instead would let a 5-token text count as much as a 5,000-token
    one, and the mean of exponentials is not the exponential of the mean loss.
    """
    total, count = negative_log_likelihood(model, tokenizer, texts, max_length=max_length, stride=stride)
    if count == 0:
        raise ValueError("no token was predicted: every text is empty")
    return math.exp(total / count)


def bits_per_byte(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
) -> float:
    """Total NLL in bits per UTF-8 byte of ``texts``: comparable across tokenizers, unlike perplexity.

    A tokenizer with longer tokens predicts fewer, harder tokens; dividing by bytes instead of tokens
    removes that difference (the measure used by e.g. Gao et al. 2020, "The Pile").
    """
    total, _ = negative_log_likelihood(model, tokenizer, texts, max_length=max_length, stride=stride)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if n_bytes == 0:
        raise ValueError("texts are empty")
    return total / (math.log(2) * n_bytes)
