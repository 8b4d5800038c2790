"""What 16-bit numbers do to training: updates that round away, gradients that underflow, and fp16 loss scaling.

bf16 keeps fp32's exponent range with 8 significant bits; fp16 has 11 significant bits but overflows
above 65,504 and flushes magnitudes below about 6e-8 to zero. Two consequences, measured here:

* weights *stored* in 16 bits lose every update smaller than half the gap between neighbouring
  16-bit numbers -- the reason mixed precision keeps fp32 master weights (:func:`lost_update_fraction`);
* fp16 gradients underflow unless the loss is scaled up before backward, and a scale too large
  overflows: ``torch.amp.GradScaler`` skips those steps and halves the scale (:func:`train_steps`).

How the book's trainers choose a precision is ``labkit.train.precision_args``; this module explains why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from labkit.accumulation import gradients
from labkit.vocabulary import PRECISIONS, check_choice

FORMATS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Storage formats by the short names ``labkit.vocabulary.PRECISIONS`` builds on."""

Batch = Mapping[str, torch.Tensor]
"""``input_ids`` and ``labels`` (and optionally ``attention_mask``), (batch, seq)."""


def rounds_away(weights: torch.Tensor, updates: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """True where a nonzero update, added to the weight stored in ``dtype``, leaves the stored weight unchanged."""
    stored = weights.to(dtype)
    return (updates != 0) & (stored + updates.to(dtype) == stored)


def adamw_updates(model: torch.nn.Module, batch: Batch, *, lr: float, steps: int = 1) -> tuple[dict, dict]:
    """(weights before, fp32 update) per trainable parameter after ``steps`` AdamW steps on ``batch`` (the model changes)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if any(p.dtype != torch.float32 for p in params.values()):
        raise ValueError("adamw_updates needs fp32 weights: the update is measured before any rounding")
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model(**_on_device(batch, model)).loss.backward()
        optimizer.step()
    return before, {n: p.detach() - before[n] for n, p in params.items()}


def lost_update_fraction(weights: Mapping[str, torch.Tensor], updates: Mapping[str, torch.Tensor], dtype: torch.dtype) -> float:
    """Share of the nonzero updates that weights stored in ``dtype`` would not register (all parameters together)."""
    lost = sum(int(rounds_away(weights[n], updates[n], dtype).sum()) for n in weights)
    nonzero = sum(int((updates[n] != 0).sum()) for n in weights)
    if nonzero == 0:
        raise ValueError("every update is zero: nothing to lose")
    return lost / nonzero


def _on_device(batch: Batch, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def underflow_fraction(model: torch.nn.Module, batch: Batch, *, scale: float = 1.0) -> float:
    """Share of the gradient entries nonzero in fp32 that come out zero when the forward and backward run in
    fp16 autocast with the loss multiplied by ``scale`` (and the gradients divided by it afterwards)."""
    device_type = next(model.parameters()).device.type
    model.zero_grad(set_to_none=True)
    model(**_on_device(batch, model)).loss.backward()
    reference = gradients(model)
    model.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.float16):
        loss = model(**_on_device(batch, model)).loss
    (loss.float() * scale).backward()
    scaled = gradients(model)
    model.zero_grad(set_to_none=True)
    nonzero = sum(int((g != 0).sum()) for g in reference.values())
    vanished = sum(int(((reference[n] != 0) & (scaled.get(n, torch.zeros_like(g)) == 0)).sum()) for n, g in reference.items())
    return vanished / nonzero


def train_steps(model: torch.nn.Module, batches: Sequence[Batch], *, lr: float, precision: str = "fp32",
                init_scale: float = 2.0**16, growth_interval: int = 2000, max_grad_norm: float | None = None) -> list[dict]:
    """AdamW over ``batches`` (one step each) in ``precision`` (``labkit.vocabulary.PRECISIONS``); per step the loss,
    the gradient's global L2 norm before any clipping (``grad_norm``; unscaled under fp16 loss scaling), and for
    ``fp16-mixed`` the loss scale used and whether the step was skipped.

    ``max_grad_norm``: rescale the gradient to this global norm when it is longer (``clip_grad_norm_``, as
    transformers' Trainer does with its ``max_grad_norm``, default 1.0); ``None`` never clips.

    ``fp32``: fp32 weights and arithmetic. ``bf16`` / ``fp16``: the weights are cast and stored in 16 bits and
    the optimizer updates them there (pure 16-bit). ``bf16-mixed`` / ``fp16-mixed``: fp32 weights (the masters
    the optimizer updates) and the forward and backward in 16-bit autocast; ``fp16-mixed`` scales the loss with
    ``torch.amp.GradScaler`` (``init_scale``, ``growth_interval``), which skips a step whose gradient holds
    inf or NaN and halves the scale. ``model`` is trained in place (and cast, for pure 16 bits).
    """
    check_choice("precision", precision, PRECISIONS)
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None (no clipping), got {max_grad_norm!r}")
    device_type = next(model.parameters()).device.type
    if precision in ("bf16", "fp16"):
        model.to(FORMATS[precision])
    elif any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError(f"precision {precision!r} needs fp32 weights (the masters); got {next(model.parameters()).dtype}")
    autocast = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device_type, init_scale=init_scale, growth_interval=growth_interval,
                                  enabled=precision == "fp16-mixed")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    history = []
    for step, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = model(**_on_device(batch, model)).loss
        used = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # the norm and the clipping see the true gradient, not the scaled one
        norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm if max_grad_norm is not None else math.inf)
        scaler.step(optimizer)
        scaler.update()
        row = {"step": step, "loss": float(loss.detach()), "grad_norm": float(norm)}
        if scaler.is_enabled():
            row.update(scale=used, skipped=scaler.get_scale() < used)
        history.append(row)
    return history
