"""Packing: fill fixed-length rows with whole examples (TRL's best-fit-decreasing) without letting attention cross them.

A packed row carries ``position_ids`` that restart at 0 for every example. Given ``position_ids``
and *no* ``attention_mask`` (and no KV cache), transformers turns the restarts into a block-diagonal
causal mask, so each token attends only to earlier tokens of its own example.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

MODEL_KEYS = ("input_ids", "labels", "position_ids", "attention_mask")
"""The collated keys a Llama forward pass takes on the CPU (the varlen ``cu_seq_lens_*`` serve flash attention)."""


def pack(dataset, seq_length: int, strategy: str = "bfd"):
    """Rows of at most ``seq_length`` tokens, each holding whole examples, with their lengths in ``seq_lengths``.

    ``dataset`` has ``input_ids`` and ``labels`` (``labkit.data.masks.tokenize_dataset``). TRL's
    best fit decreasing would silently cut an example longer than ``seq_length``; here that is an
    error naming the example (``strategy="bfd_split"`` splits such examples instead).
    """
    from trl import pack_dataset

    if strategy not in ("bfd", "bfd_split"):
        raise ValueError(f"strategy must be 'bfd' or 'bfd_split' (they keep example boundaries); got {strategy!r}")
    if strategy == "bfd":
        too_long = [(i, len(ids)) for i, ids in enumerate(dataset["input_ids"]) if len(ids) > seq_length]
        if too_long:
            i, n = too_long[0]
            raise ValueError(f"{len(too_long)} examples are longer than seq_length={seq_length} and would be truncated, "
                             f"e.g. example {i} with {n} tokens; filter them first (labkit.data.validate with max_tokens)")
    return pack_dataset(dataset.select_columns(["input_ids", "labels"]), seq_length, strategy=strategy)


def collate_packed(rows: Sequence[dict], pad_token_id: int) -> dict:
    """One padding-free batch (TRL's collator): all rows flattened to shape (1, T) with restarting ``position_ids``."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)(list(rows))
    return {k: v for k, v in batch.items() if k in MODEL_KEYS}


def collate_padded(rows: Sequence[dict], pad_token_id: int) -> dict:
    """A padded batch (TRL's collator): (B, longest) with an ``attention_mask`` and -100 labels on padding."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    batch = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)(rows)
    return {k: v for k, v in batch.items() if k in MODEL_KEYS}


def padded_batches(rows, pad_token_id: int, batch_size: int) -> list[dict]:
    """Consecutive :func:`collate_padded` batches of ``batch_size`` tokenized rows, in order; the last may be smaller.

    Built on the CPU: whoever runs a batch moves it to the model's device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [collate_padded([rows[j] for j in range(i, min(i + batch_size, len(rows)))], pad_token_id)
            for i in range(0, len(rows), batch_size)]


def example_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) index of the example each token belongs to, counted from the restarts of ``position_ids`` at 0."""
    return (position_ids == 0).long().cumsum(-1) - 1


def allowed_attention(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T, T) boolean: may query t attend to key s? Causal and within one example -- what the model must compute."""
    ex = example_ids(position_ids)
    T = position_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return causal & (ex[:, :, None] == ex[:, None, :])


def forward(model, batch: dict):
    """The model's output on a collated batch. ``use_cache=False`` matters: with a cache, transformers does not
    derive the per-example mask from ``position_ids``, and attention would cross examples."""
    return model(**batch, use_cache=False)


def batches(rows: Sequence[dict], batch_size: int, seed: int = 0) -> Iterable[list[dict]]:
    """``rows`` in a seeded random order, ``batch_size`` at a time (the last batch may be smaller)."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    for start in range(0, len(order), batch_size):
        yield [rows[i] for i in order[start:start + batch_size]]


@dataclass
class Throughput:
    steps: int
    """Optimizer steps taken."""
    tokens: int
    """Positions computed, padding included: what the hardware paid for."""
    real_tokens: int
    """Positions holding a token of an example: the useful work."""
    seconds: float

    @property
    def useful_tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds

    @property
    def padding_share(self) -> float:
        return 1 - self.real_tokens / self.tokens


def train_throughput(model, collated: Sequence[dict], lr: float = 1e-4) -> Throughput:
    """Train one step (forward, backward, AdamW) per batch and time it; return what was computed and how fast."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    tokens = real = 0
    start = time.perf_counter()
    for batch in collated:
        loss = forward(model, batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    seconds = time.perf_counter() - start
    model.eval()
    return Throughput(len(collated), tokens, real, seconds)


def compare_throughput(model, runs: Mapping[str, Sequence[dict]], lr: float = 1e-4) -> dict[str, Throughput]:
    """Train one copy of ``model`` per run, alternating their steps, and time each step.

    Interleaving makes the comparison fair on a shared machine: a burst of background load, or the
    first call's warm-up, falls on every run alike instead of on whichever ran first.
    """
    copies = {name: copy.deepcopy(model).train() for name in runs}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=lr) for name, m in copies.items()}
    stats = {name: Throughput(0, 0, 0, 0.0) for name in runs}
    for name, batches in runs.items():  # warm-up, untimed: one forward and backward, no update
        forward(copies[name], batches[0]).loss.backward()
        copies[name].zero_grad(set_to_none=True)
    for k in range(max(len(b) for b in runs.values())):
        for name, batches in runs.items():
            if k >= len(batches):
                continue
            batch, start = batches[k], time.perf_counter()
            forward(copies[name], batch).loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            t = stats[name]
            t.seconds += time.perf_counter() - start
            t.steps += 1
            t.tokens += batch["input_ids"].numel()
            t.real_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    return stats
