"""``preflight``: every pitfall check whose inputs are given, before a run starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from labkit.check.batches import packing_isolation, padding_side
from labkit.check.finding import Finding
from labkit.check.labels import eos_in_labels, stop_token_ids
from labkit.check.memory import fits_memory
from labkit.check.template import chat_template_match
from labkit.check.weights import QUANTIZED_LINEARS, has_adapter, config_precision, merge_quantized, precision

MAX_RECORDS = 1000
"""Training records a pre-flight reads (the first ones): enough to find a systematic pitfall, fast on any dataset."""


def _first(train, n: int) -> list:
    if hasattr(train, "select"):  # a datasets.Dataset
        return list(train.select(range(min(n, len(train)))))
    return list(train[:n]) if isinstance(train, Sequence) else [r for r, _ in zip(train, range(n))]


def method_of(model) -> str:
    """``full``, or for a peft model ``lora``, or ``qlora`` over bitsandbytes 4-bit layers: the memory model's method."""
    if not has_adapter(model):
        return "full"
    four_bit = any(type(m).__name__ == QUANTIZED_LINEARS[0] for m in model.modules())
    return "qlora" if four_bit else "lora"


def memory_setup(config) -> dict:
    """``estimate_memory`` options read from a training config: micro-batch, sequence length, precision,
    activation checkpointing and optimizer (AdamW variants by their state size)."""
    options = {"precision": config_precision(config)}
    if getattr(config, "per_device_train_batch_size", None):
        options["batch_size"] = config.per_device_train_batch_size
    seq_len = getattr(config, "max_length", None) or getattr(config, "max_seq_length", None)
    if seq_len:
        options["seq_len"] = seq_len
    checkpointing = getattr(config, "activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(config, "gradient_checkpointing", False)
    options["gradient_checkpointing"] = "full" if checkpointing else "none"
    optim = str(getattr(getattr(config, "optim", None), "value", getattr(config, "optim", "")) or "")
    if optim.startswith(("adamw", "paged_adamw")):
        options["optimizer"] = "adamw_8bit" if "8bit" in optim else "adamw_torch"
    return options


def preflight(model=None, tokenizer=None, train=None, config=None, *, gpu_gib: float | None = None,
              batch: Mapping | None = None, seq_lengths: Sequence | None = None,
              generation_batch: Mapping | None = None, method: str | None = None,
              memory_options: Mapping[str, Any] | None = None, max_records: int = MAX_RECORDS) -> list[Finding]:
    """Every check whose inputs are given; an empty list when none finds a pitfall.

    * ``train`` (the first ``max_records``) with ``tokenizer``: tokenized rows (``input_ids``, ``labels``) go to
      :func:`eos_in_labels`; chats or prompt-completion records to :func:`chat_template_match`;
    * ``batch``, a collated training batch: :func:`eos_in_labels` and :func:`packing_isolation` (with
      ``seq_lengths``, the model's attention implementation);
    * ``tokenizer`` or ``generation_batch``: :func:`padding_side`;
    * ``model``: :func:`merge_quantized`, and :func:`precision` with ``config`` (a training config);
    * ``model`` with ``gpu_gib``: :func:`fits_memory`, its setup read from ``config`` (:func:`memory_setup`),
      ``method`` (default :func:`method_of`) and ``memory_options``, which win.
    """
    findings: list[Finding] = []
    stops = stop_token_ids(tokenizer, model) if tokenizer is not None else None
    if train is not None:
        if tokenizer is None:
            raise ValueError("preflight: train was given without a tokenizer; expected the tokenizer the data is rendered with")
        rows = _first(train, max_records)
        tokenized = [r for r in rows if "input_ids" in r and "labels" in r]
        if tokenized:
            findings += eos_in_labels(tokenized, tokenizer, stop_ids=stops)
        conversations = [r for r in rows if "messages" in r or isinstance(r.get("prompt"), str)]
        if conversations:
            findings += chat_template_match(conversations, tokenizer)
    if batch is not None:
        if tokenizer is not None and "labels" in batch:
            findings += eos_in_labels(batch, tokenizer, stop_ids=stops)
        attention = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
        findings += packing_isolation(batch, seq_lengths=seq_lengths, attn_implementation=attention)
    if tokenizer is not None or generation_batch is not None:
        findings += padding_side(tokenizer, batch=generation_batch, model=model)
    if model is not None:
        findings += merge_quantized(model)
    if model is not None or config is not None:
        findings += precision(config, model)
    if gpu_gib is not None:
        if model is None:
            raise ValueError("preflight: gpu_gib was given without a model; expected the model (or its registry name) to estimate")
        options = (memory_setup(config) if config is not None else {}) | dict(memory_options or {})
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        findings += fits_memory(base, gpu_gib=gpu_gib, method=method or method_of(model), **options)
    return findings
