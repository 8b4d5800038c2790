"""The one vocabulary of method, optimizer and precision names that every labkit module and chapter uses.

Data keys stay these snake_case / lowercase names; readable labels are made at display time
(:func:`method_label`).
"""

from __future__ import annotations

import torch

METHODS = ("full", "lora", "qlora", "dora", "rslora", "pissa", "loraplus", "prompt", "prefix", "ia3")
"""Fine-tuning methods: full fine-tuning, the LoRA family, and prompt tuning, prefix tuning and IA3."""

LORA_METHODS = ("lora", "qlora", "dora", "rslora", "pissa", "loraplus")
"""Methods that train low-rank adapters ``B @ A`` on a frozen base."""

MEMORY_METHODS = ("full", "lora", "qlora", "dora", "rslora", "pissa", "loraplus")
"""Methods ``labkit.memory`` models. rsLoRA, PiSSA and LoRA+ change the scale, the initialisation or the
learning rates of LoRA, not its tensors, so their memory is LoRA's."""

RECIPE_METHODS = ("full", "lora", "qlora", "dora")
"""The methods a ``labkit train`` recipe runs (``labkit.recipe``)."""

OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "sgd")
"""Optimizers, by transformers' ``TrainingArguments.optim`` names."""

PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16", "fp16")
"""``fp32``; ``bf16-mixed`` / ``fp16-mixed``: 16-bit compute with fp32 master weights that the optimizer
updates (fp16 also scales the loss); ``bf16`` / ``fp16``: pure 16-bit weights, no master copy."""

_LABELS = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA", "rslora": "rsLoRA",
           "pissa": "PiSSA", "loraplus": "LoRA+", "prompt": "prompt tuning", "prefix": "prefix tuning", "ia3": "IA3"}


def check_choice(field: str, value, allowed) -> None:
    """Raise ``ValueError`` naming ``field``, the bad ``value`` and what is allowed, unless ``value in allowed``."""
    if value not in allowed:
        raise ValueError(f"{field} {value!r} is not supported; expected one of {', '.join(map(repr, allowed))}")


def method_label(method: str) -> str:
    """The readable name of ``method`` for tables and plots (``loraplus`` -> ``LoRA+``)."""
    check_choice("method", method, METHODS)
    return _LABELS[method]


def precision_for(dtype: str | torch.dtype) -> str:
    """The training precision for weights of ``dtype``: ``fp32``; 16-bit weights train mixed, with fp32 masters."""
    name = str(dtype).removeprefix("torch.")
    precisions = {"float32": "fp32", "bfloat16": "bf16-mixed", "float16": "fp16-mixed"}
    check_choice("dtype", name, tuple(precisions))
    return precisions[name]
