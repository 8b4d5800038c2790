"""LoRA from scratch: a frozen linear layer plus a trainable low-rank update, with peft's names.

Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models": the update to a weight
``W`` (out x in) is ``ΔW = B @ A * scaling`` with ``A`` (r x in), ``B`` (out x r), and
``scaling = lora_alpha / r`` (or ``lora_alpha / sqrt(r)`` for rsLoRA, Kalajdzievski 2023).
``B`` starts at zero, so training starts from the base model exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LoraSpec:
    r: int = 8
    """Rank of the update B @ A."""
    lora_alpha: float = 16
    """Scale; the update is multiplied by lora_alpha / r (lora_alpha / sqrt(r) with use_rslora)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input only; the frozen path never sees it."""
    use_rslora: bool = False

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


class LoraLinear(nn.Module):
    """``base_layer(x) + lora_B(lora_A(dropout(x))) * scaling``; ``base_layer`` is frozen."""

    def __init__(self, base_layer: nn.Linear, spec: LoraSpec):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer.requires_grad_(False)
        self.r, self.lora_alpha, self.scaling = spec.r, spec.lora_alpha, spec.scaling
        self.lora_dropout = nn.Dropout(spec.lora_dropout) if spec.lora_dropout else nn.Identity()
        dtype, device = base_layer.weight.dtype, base_layer.weight.device
        self.lora_A = nn.Linear(base_layer.in_features, spec.r, bias=False, dtype=dtype, device=device)
        self.lora_B = nn.Linear(spec.r, base_layer.out_features, bias=False, dtype=dtype, device=device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's default init
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False

    def get_delta_weight(self) -> torch.Tensor:
        """ΔW = B @ A * scaling, shaped like the base weight (out x in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merge(self) -> None:
        """Fold ΔW into the base weight: inference then costs nothing extra."""
        if self.merged:
            raise RuntimeError("already merged")
        self.base_layer.weight.data += self.get_delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError("not merged")
        self.base_layer.weight.data -= self.get_delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


def add_lora(model: nn.Module, target_modules: list[str], spec: LoraSpec) -> list[str]:
    """Replace every ``nn.Linear`` whose name ends with one of ``target_modules`` by a ``LoraLinear``.

    Freezes all other parameters; returns the replaced modules' names.
    """
    model.requires_grad_(False)
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], LoraLinear(module, spec))
            replaced.append(name)
    if not replaced:
        raise ValueError(f"no nn.Linear named any of {target_modules} in {type(model).__name__}")
    return replaced
