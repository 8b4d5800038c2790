"""Loading the base model in 4 bits with bitsandbytes, safely on CPUs too."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel


def guard_cpu_4bit(model: nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference; returns how many layers were guarded.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit``'s weight into a CPU-only
    layout the first time it runs a no-grad forward in eval mode (an evaluation, or ``generate()``).
    Training through the repacked weight afterwards goes silently wrong: with peft LoRA here the
    adapters received no gradient at all after one ``generate()`` (``tests/test_quant.py``), and
    relative errors near 1.0 were seen in other setups. Turning the feature off keeps one layout for
    training and inference; it must happen before any inference, which ``load_4bit`` ensures.
    """
    import bitsandbytes as bnb

    guarded = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            if getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False):
                raise RuntimeError("a Linear4bit was already repacked for CPU inference; guard before the first forward")
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


def load_4bit(
    path: str | Path | None = None,
    *,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """The model at ``path`` (default: labkit's base model) with its linear layers in 4 bits, guarded.

    The tied embedding / output layer stays in full precision, as in QLoRA (Dettmers et al. 2023).
    """
    from labkit.base import BASE_DIR

    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype)
    device_map = None if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(path or BASE_DIR, quantization_config=config, device_map=device_map)
    guard_cpu_4bit(model)
    return model.eval()
