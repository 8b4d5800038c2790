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
    guard: bool = True,
) -> PreTrainedModel:
    """The model at ``path`` (default: labkit's base model) with its linear layers in 4 bits, guarded.

    The tied embedding / output layer and the norms stay unquantized, in ``compute_dtype``, as in QLoRA
    (Dettmers et al. 2023).
    ``guard=False`` leaves bitsandbytes' CPU repacking on: only to demonstrate what goes wrong.
    """
    from labkit.paths import BASE_DIR

    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype)
    device_map = {"": 0} if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(path or BASE_DIR, quantization_config=config, device_map=device_map,
                                                 dtype=compute_dtype)  # the unquantized weights (embeddings, norms)
    if guard:
        guard_cpu_4bit(model)
    return model.eval()


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of every linear layer's weight and bias, with 4-bit layers' quantization constants; the output layer excluded.

    For a 4-bit layer: the packed codes (two per byte), the per-block absmax and the code table, and
    with double quantization the second-level absmax, code table and offset.
    """
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    total = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear) or module is output:
            continue
        tensors = [module.weight] + ([module.bias] if module.bias is not None else [])
        state = getattr(module.weight, "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code]
            if state.nested:
                tensors += [state.state2.absmax, state.state2.code, state.offset]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def lora_gradient_error_after_generate(*, guard: bool = True, seed: int = 0) -> dict[str, float]:
    """Relative error of every LoRA gradient of the 4-bit base model after one ``generate()``.

    The reference is the same LoRA on an fp32 copy of the dequantized weights, so quantization
    itself is not part of the error. Both get the same non-zero adapter weights and batch. A
    gradient that is missing altogether counts as ``inf``.
    """
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    from labkit.base import load_base

    quantized = load_4bit(guard=guard)
    device = next(quantized.parameters()).device  # CUDA when there is a GPU (load_4bit's device_map)
    reference = load_base()[0].to(device)
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            reference.get_submodule(name).weight.data.copy_(weight.float())
    config = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    q_peft, r_peft = get_peft_model(quantized, LoraConfig(**config)), get_peft_model(reference, LoraConfig(**config))
    q_params = {n: p for n, p in q_peft.named_parameters() if p.requires_grad}
    r_params = {n: p for n, p in r_peft.named_parameters() if p.requires_grad}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in q_params.items():  # non-zero B, so every adapter weight gets a gradient
            p.copy_(torch.randn(p.shape, generator=generator).to(p.device) * 0.05)
            r_params[name].copy_(p)
    ids = torch.randint(0, reference.config.vocab_size, (2, 24), generator=generator).to(device)  # (B, T)
    q_peft.eval()
    q_peft.generate(input_ids=ids[:, :4], max_new_tokens=4, do_sample=False)  # an evaluation before training
    for model in (q_peft, r_peft):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
    return {name: float("inf") if p.grad is None else ((p.grad - r_params[name].grad).norm() / r_params[name].grad.norm()).item()
            for name, p in q_params.items()}
