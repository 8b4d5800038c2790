"""Weights and their number format: the training precision for this hardware, and merging into a quantized base."""

from __future__ import annotations

import torch

from labkit.check.finding import Finding
from labkit.vocabulary import PRECISIONS, check_choice

QUANTIZED_LINEARS = ("Linear4bit", "Linear8bitLt")
"""bitsandbytes' quantized linear layers (``bitsandbytes.nn``)."""

_SINGLE_PLACE = ("let labkit choose: get_profile() picks the compute dtype for the hardware and "
                 "labkit.train.precision_args(profile) sets the trainer's bf16/fp16 flags over fp32 weights")


def config_precision(config) -> str:
    """The ``labkit.vocabulary.PRECISIONS`` name of a training config (its ``bf16``/``fp16`` flags) or of a name."""
    if isinstance(config, str):
        check_choice("precision", config, PRECISIONS)
        return config
    if getattr(config, "bf16", False):
        return "bf16-mixed"
    return "fp16-mixed" if getattr(config, "fp16", False) else "fp32"


def _device(config, model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if getattr(config, "use_cpu", False):
        return torch.device("cpu")
    if model is not None:
        return next(model.parameters()).device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def precision(config=None, model=None, *, device: str | torch.device | None = None) -> list[Finding]:
    """Training precision pitfalls: 16-bit weights trained without fp32 masters, fp16 without loss scaling,
    fp16 where bf16 runs natively, bf16 where it does not.

    ``config``: a transformers/TRL training config (its ``bf16``/``fp16`` flags, Trainer-style: autocast, and
    loss scaling for fp16) or a name from ``labkit.vocabulary.PRECISIONS``; ``model``: the weights the
    optimizer will update (their dtype); ``device``: where it trains (default: ``config.use_cpu``, the model's
    device, else CUDA when present). Whether bf16 is native is ``labkit.hardware.native_bf16``.
    """
    from labkit.hardware import native_bf16

    name = config_precision(config) if config is not None else None
    findings = []
    trainable = {p.dtype for p in model.parameters() if p.requires_grad} if model is not None else set()
    if name == "fp16" or torch.float16 in trainable:
        where = "precision 'fp16'" if name == "fp16" else "trainable weights stored in float16"
        findings.append(Finding("precision", "error",
                                f"{where}: the optimizer updates fp16 weights with no fp32 master copy and no loss scaling, so "
                                "small gradients underflow to zero and small updates round away (labkit.precision); expected fp32 "
                                "weights with fp16 autocast and a GradScaler ('fp16-mixed', the trainer's fp16=True).",
                                "load the weights in fp32 (labkit.profiles.load_model does) and train with fp16=True; " + _SINGLE_PLACE))
    if name == "bf16" or torch.bfloat16 in trainable:
        where = "precision 'bf16'" if name == "bf16" else "trainable weights stored in bfloat16"
        findings.append(Finding("precision", "warning",
                                f"{where}: the optimizer updates bf16 weights with no fp32 master copy, and updates smaller than "
                                "half the gap between neighbouring bf16 numbers round away (labkit.precision.lost_update_fraction); "
                                "expected fp32 weights with bf16 autocast ('bf16-mixed', the trainer's bf16=True).",
                                "load the weights in fp32 (labkit.profiles.load_model does) and train with bf16=True; " + _SINGLE_PLACE))
    if name is None:
        return findings
    where = _device(config, model, device)
    native = native_bf16(where)
    if name.startswith("fp16") and native:
        findings.append(Finding("precision", "warning",
                                f"{name} on {where.type}, which runs bf16 natively: fp16 overflows above 65,504 and needs loss "
                                "scaling (skipped steps); expected bf16-mixed, which keeps fp32's exponent range.",
                                "train with bf16=True, fp16=False; " + _SINGLE_PLACE))
    if name.startswith("bf16") and not native:
        cuda = where.type == "cuda"
        findings.append(Finding("precision", "error" if cuda else "warning",
                                f"{name} on {where.type}, which has no native bf16: "
                                + ("this GPU cannot run bf16 kernels; expected fp16-mixed." if cuda else
                                   "the CPU emulates bf16 matrix products, many times slower than fp32; expected fp32 here."),
                                ("train with fp16=True (loss scaling), bf16=False; " if cuda else "train in fp32 (bf16=False); ")
                                + _SINGLE_PLACE))
    return findings


def has_adapter(model) -> bool:
    """True for a peft model, or any model holding LoRA layers (``lora_A``)."""
    return hasattr(model, "peft_config") or any(hasattr(m, "lora_A") for m in model.modules())


def merge_quantized(model) -> list[Finding]:
    """A LoRA adapter over bitsandbytes 4-/8-bit layers: ``merge_and_unload()`` would add the update into
    quantized weights, re-quantize them and round much of the update away, and the merged model stays quantized.

    Checks module types by name, so bitsandbytes need not be importable. A quantized base without an adapter
    (nothing to merge) or an adapter over full-precision layers passes.
    """
    if not has_adapter(model):
        return []
    quantized = [(name, type(m).__name__) for name, m in model.named_modules()
                 if type(m).__name__ in QUANTIZED_LINEARS and type(m).__module__.startswith("bitsandbytes")]
    if not quantized:
        return []
    name, kind = quantized[0]
    return [Finding("merge_quantized", "warning",
                    f"module {name!r} is a bitsandbytes {kind} under a LoRA adapter ({len(quantized)} quantized linears in all): "
                    "merging adds the update into quantized weights and re-quantizes them, which rounds the update away; "
                    "expected a full-precision base to merge into.",
                    "save the adapter, load the base again without quantization_config (bf16 or fp32), attach the adapter "
                    "with peft.PeftModel.from_pretrained and merge that (labkit.adapters.adapter_round_trip checks the result)")]
