"""Batches the model sees: padding on the side generation appends to, and packed rows whose attention crosses examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from labkit.check.finding import Finding
from labkit.data.packing import example_ids

_PACKED_FIX = ("collate packed rows padding-free with restarting position_ids and no attention_mask "
               "(labkit.data.packing.collate_packed, TRL's padding_free=True) and call the model with use_cache=False "
               "(labkit.data.packing.forward; TRL's trainer does)")


def padding_side(tokenizer=None, *, batch: Mapping | None = None, model=None) -> list[Finding]:
    """Right padding in batched generation with a decoder-only model: ``generate()`` appends after the padding.

    With ``batch`` (prompts tokenized for generation, with an ``attention_mask``): an error for each batch whose
    rows end in padding. Otherwise a warning when ``tokenizer.padding_side`` is ``right`` (right is fine for
    training; TRL's collator pads right itself). Encoder-decoder models (``model.config.is_encoder_decoder``) pass.
    """
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return []
    fix = ("set tokenizer.padding_side = 'left' before tokenizing prompts for generation "
           "(labkit.generation.generate_batch does it for you)")
    if batch is not None:
        mask = batch["attention_mask"]
        mask = mask.unsqueeze(0) if mask.dim() == 1 else mask  # (B, T)
        padded_last = (mask[:, -1] == 0).nonzero().flatten().tolist()
        if padded_last:
            return [Finding("padding_side", "error",
                            f"generation batch row {padded_last[0]}: its last position is padding (attention_mask[{padded_last[0]}, -1] == 0), "
                            f"so new tokens follow the padding; expected every prompt to end at the last position (left padding). "
                            f"{len(padded_last)} of {mask.shape[0]} rows end in padding.", fix)]
        return []
    if tokenizer is not None and tokenizer.padding_side == "right":
        return [Finding("padding_side", "warning",
                        "tokenizer.padding_side is 'right': a batch of prompts of different lengths tokenized for generation "
                        "puts padding between a prompt and its continuation; expected 'left' for batched generation.", fix)]
    return []


def _true_examples(seq_lengths: Sequence, shape: torch.Size) -> torch.Tensor:
    """(B, T) index of the example each position holds, -1 on padding, from per-row example lengths."""
    rows = [list(seq_lengths)] if seq_lengths and not isinstance(seq_lengths[0], Sequence) else [list(r) for r in seq_lengths]
    if len(rows) != shape[0]:
        raise ValueError(f"seq_lengths has {len(rows)} rows for a batch of {shape[0]}; expected one list of lengths per row")
    truth = torch.full(shape, -1, dtype=torch.long)  # on the CPU: batch tensors are compared after .cpu()
    for r, lengths in enumerate(rows):
        if sum(lengths) > shape[1]:
            raise ValueError(f"row {r}: seq_lengths sum to {sum(lengths)}, more than the row's {shape[1]} positions")
        truth[r, :sum(lengths)] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.long))
    return truth


def _crossing(allowed: torch.Tensor, truth: torch.Tensor) -> tuple[int, int, int] | None:
    """(row, query, key) of the first allowed attention between two different examples, or None."""
    real = truth >= 0
    other = (truth[:, :, None] != truth[:, None, :]) & real[:, :, None] & real[:, None, :]
    hits = (allowed & other).nonzero()
    return tuple(hits[0].tolist()) if len(hits) else None


def packing_isolation(batch: Mapping, *, seq_lengths: Sequence | None = None, use_cache: bool = False,
                      attn_implementation: str = "sdpa") -> list[Finding]:
    """Packed rows whose attention would cross example boundaries (one example reading another).

    ``batch``: the collated batch as the model gets it (``input_ids``; ``position_ids``, ``attention_mask``,
    ``cu_seq_lens_q`` when present). The examples' boundaries come from ``seq_lengths`` (a list of lengths per
    row, as ``labkit.data.packing.pack`` records them; a flat list for one row) or, without it, from the
    restarts of ``position_ids``. transformers isolates examples only from restarting ``position_ids`` with no
    2-D ``attention_mask`` and no KV cache (``use_cache``: how the forward is called), from a 4-D block mask,
    or with flash attention (``attn_implementation``) from ``cu_seq_lens_q``. Rows holding one example pass.
    """
    ids = batch["input_ids"]
    shape = ids.shape if ids.dim() == 2 else (1, ids.shape[0])
    positions = batch.get("position_ids")
    positions = None if positions is None else positions.reshape(shape).cpu()
    if seq_lengths is not None:
        truth = _true_examples(seq_lengths, shape)
    elif positions is not None:
        truth = example_ids(positions)
    else:
        return []
    if int(truth.max(dim=-1).values.max()) < 1:
        return []  # one example per row: nothing to leak

    def error(message: str) -> list[Finding]:
        return [Finding("packing_isolation", "error", message + " expected each token to attend only to its own example.", _PACKED_FIX)]

    def first_start() -> tuple[int, int]:
        r, t = ((truth[:, 1:] != truth[:, :-1]) & (truth[:, 1:] > 0)).nonzero()[0].tolist()
        return r, t + 1

    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 4:  # (B, 1, T, T): True (or 0.0) where attention is allowed
        allowed = (mask[:, 0].bool() if mask.dtype == torch.bool else mask[:, 0] == 0).cpu()  # the check runs on the CPU
        hit = _crossing(allowed & torch.ones(shape[1], shape[1], dtype=torch.bool).tril(), truth)
        return error(f"row {hit[0]}: the 4-D attention_mask lets token {hit[1]} attend to token {hit[2]} of another example;") if hit else []
    if attn_implementation.startswith("flash") and "cu_seq_lens_q" in batch:
        starts = torch.cat([torch.tensor([0]), (truth.flatten()[1:] != truth.flatten()[:-1]).nonzero().flatten() + 1])
        given = batch["cu_seq_lens_q"].flatten()[:-1].cpu()
        if torch.equal(given, starts):
            return []
        return error(f"cu_seq_lens_q starts sequences at {given.tolist()[:8]}, but the examples start at {starts.tolist()[:8]};")
    r, t = first_start()
    if use_cache:
        return error(f"row {r}: the forward runs with a KV cache, so transformers does not turn the position_ids restarts "
                     f"into a block mask and token {t}, first of a new example, attends to the example before it;")
    if mask is not None:
        return error(f"row {r}: a 2-D attention_mask is given, so transformers applies one causal mask over the whole row "
                     f"(position_ids restarts are used only without one) and token {t}, first of a new example, attends to the example before it;")
    if positions is None:
        return error(f"row {r}: no position_ids, so the row is numbered as one sequence and token {t}, first of a new example, "
                     f"attends to the example before it;")
    wrong = (example_ids(positions) != truth) & (truth >= 0)
    if wrong.any():
        r, t = wrong.nonzero()[0].tolist()
        return error(f"row {r}, token {t}: position_ids do not restart at 0 where each example starts "
                     f"(position {int(positions[r, t])} at a token of example {int(truth[r, t])}), so attention runs across the boundary;")
    return []
