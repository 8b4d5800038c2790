"""Several LoRA adapters on one base model: loaded once, switched by name, mixed within one batch.

An adapter is a few megabytes beside a base model of hundreds; once every adapter sits in one peft model,
changing task is ``set_adapter`` (a flag in every LoRA layer), and one batch can even serve several tasks:
peft's ``adapter_names`` keyword gives each row its own adapter (``"__base__"`` for none).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

BASE = "__base__"
"""peft's ``adapter_names`` entry for a row that runs the base model alone."""


def load_adapters(base: PreTrainedModel, folders: Mapping[str, str | Path]):
    """One peft model over ``base`` holding every adapter of ``folders`` (name -> saved adapter folder).

    The first adapter is active. ``base`` is wrapped in place: pass a copy to keep it untouched.
    """
    from peft import PeftModel

    if not folders:
        raise ValueError("folders is empty: pass at least one adapter name -> saved adapter folder")
    names = list(folders)
    model = PeftModel.from_pretrained(base, str(folders[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(folders[name]), adapter_name=name)
    model.set_adapter(names[0])
    return model.eval()


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``action`` (after one untimed call)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def generate_mixed(model, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], adapter_names: Sequence[str], *,
                   max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy answers (cut at the first newline), each prompt through its own adapter, rows of different
    adapters sharing a batch (peft's ``adapter_names``; :data:`BASE` for the base model)."""
    from labkit.generation import generate_batch

    if len(prompts) != len(adapter_names):
        raise ValueError(f"one adapter name per prompt: got {len(prompts)} prompts and {len(adapter_names)} names")
    unknown = sorted(set(adapter_names) - set(model.peft_config) - {BASE})
    if unknown:
        raise ValueError(f"adapter(s) {unknown} not in the model; it has {list(model.peft_config)} (and {BASE!r})")
    answers = []
    for i in range(0, len(prompts), batch_size):
        rows = generate_batch(model, tokenizer, list(prompts[i : i + batch_size]), adapter_names=list(adapter_names[i : i + batch_size]),
                              max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0, temperature=None,
                              top_k=None, top_p=None)
        answers.extend(row.strip().split("\n", 1)[0].strip() for row in rows)
    return answers


@torch.no_grad()
def mixed_batch_gap(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapter_names: Sequence[str]) -> float:
    """The largest absolute logit difference between one mixed-adapter forward pass and each row run with its adapter alone."""
    mixed = model(input_ids=input_ids, attention_mask=attention_mask, adapter_names=list(adapter_names)).logits
    previous = model.active_adapter
    gap = 0.0
    for name in dict.fromkeys(adapter_names):
        rows = [i for i, n in enumerate(adapter_names) if n == name]
        if name == BASE:
            with model.disable_adapter():
                alone = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows]).logits
        else:
            model.set_adapter(name)
            alone = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows]).logits
        keep = attention_mask[rows].bool()  # (R, T): padding positions carry no answer
        gap = max(gap, (mixed[rows] - alone)[keep].abs().max().item())
    model.set_adapter(previous)
    return gap
