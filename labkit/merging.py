"""Merging task adapters into one: LoRA deltas summed by hand (``cat``, ``linear``) and peft's TIES and DARE.

A LoRA adapter's update to a weight is ``ΔW = B @ A * scaling``. Merging ``K`` adapters with weights
``w_k`` means building one adapter from theirs. There are two ways to do it, with different results:

* ``cat`` stacks the factors: ``A = [w_1 s_1 A_1; ...; w_K s_K A_K]`` (rank ``r_1 + ... + r_K``) and
  ``B = [B_1 ... B_K]``, so ``B @ A = Σ w_k ΔW_k`` exactly: task arithmetic on the deltas.
* ``linear`` keeps the rank ``r`` and averages the *factors*: ``A = Σ √(w_k s_k) A_k``,
  ``B = Σ √(w_k s_k) B_k``. Their product is ``Σ w_k ΔW_k`` plus cross terms ``B_j A_k`` that neither
  adapter learned; :func:`cross_term_share` measures how large they are.

TIES (Yadav et al. 2023) trims each update to its largest entries, elects a sign per entry and averages
only the entries that agree; DARE (Yu et al. 2024) drops entries at random and rescales the rest. peft
applies both to the factors, like ``linear`` (:func:`merge_adapters` passes them through).
"""

from __future__ import annotations

import torch

FROM_SCRATCH = ("cat", "linear")
"""Combination types :func:`merge_adapters` computes here (equal to peft's ``add_weighted_adapter``, tested)."""
THROUGH_PEFT = ("ties", "dare_ties", "dare_linear", "magnitude_prune", "svd")
"""Combination types :func:`merge_adapters` leaves to peft; all but ``svd`` take a ``density``."""


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """The peft LoRA layers of ``model`` by module name (those holding ``lora_A``/``lora_B`` per adapter)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def delta_weights(model, adapter: str) -> dict[str, torch.Tensor]:
    """``ΔW = B @ A * scaling`` of ``adapter`` per LoRA layer of ``model`` (shaped like the base weight)."""
    deltas = {name: layer.get_delta_weight(adapter) for name, layer in lora_layers(model).items() if adapter in layer.lora_A}
    if not deltas:
        raise ValueError(f"no LoRA layer of the model holds adapter {adapter!r}")
    return deltas


def cat_factors(factors: list[tuple[torch.Tensor, torch.Tensor, float]], weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` whose product is ``Σ w_k s_k B_k A_k``: factors stacked along the rank.

    ``factors``: per adapter ``(A_k (r_k, in), B_k (out, r_k), scaling s_k)``. Returns ``A (Σr, in)``, ``B (out, Σr)``.
    """
    _check(factors, weights)
    a = torch.cat([A * (w * s) for (A, _, s), w in zip(factors, weights)], dim=0)  # (Σr, in)
    b = torch.cat([B for _, B, _ in factors], dim=1)  # (out, Σr)
    return a, b


def linear_factors(factors: list[tuple[torch.Tensor, torch.Tensor, float]], weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of rank ``r``: each factor summed with ``√|w_k s_k|`` (the sign on ``A`` only), as peft's ``linear``."""
    _check(factors, weights)
    if len({A.shape for A, _, _ in factors}) != 1:
        raise ValueError(f"linear merging needs equal ranks; got A shapes {[tuple(A.shape) for A, _, _ in factors]}")
    roots = [abs(w * s) ** 0.5 for (_, _, s), w in zip(factors, weights)]
    signs = [1.0 if w * s >= 0 else -1.0 for (_, _, s), w in zip(factors, weights)]
    a = sum(A * (root * sign) for (A, _, _), root, sign in zip(factors, roots, signs))
    b = sum(B * root for (_, B, _), root in zip(factors, roots))
    return a, b


def _check(factors, weights) -> None:
    if len(factors) != len(weights) or not factors:
        raise ValueError(f"need one weight per adapter and at least one adapter; got {len(factors)} adapters, "
                         f"{len(weights)} weights")


def merge_adapters(model, adapters: list[str], weights: list[float], adapter_name: str, *,
                   combination_type: str = "cat", density: float | None = None) -> str:
    """Add ``adapter_name`` to the peft ``model``: ``adapters`` merged with ``weights``; returns its name.

    ``cat`` and ``linear`` are computed here (:func:`cat_factors`, :func:`linear_factors`); the types of
    :data:`THROUGH_PEFT` call peft's ``add_weighted_adapter`` (``density``: the share of entries kept,
    in (0, 1]). Like peft, the new adapter has ``lora_alpha = r`` (scaling 1): the weights live in the factors.
    """
    if combination_type not in FROM_SCRATCH + THROUGH_PEFT:
        raise ValueError(f"combination_type {combination_type!r} is unknown; expected one of {FROM_SCRATCH + THROUGH_PEFT}")
    if adapter_name in model.peft_config:
        raise ValueError(f"the model already has an adapter named {adapter_name!r}")
    missing = [a for a in adapters if a not in model.peft_config]
    if missing:
        raise ValueError(f"adapter(s) {missing} not in the model; it has {list(model.peft_config)}")
    needs_density = combination_type in THROUGH_PEFT and combination_type != "svd"
    if needs_density and not (density is not None and 0 < density <= 1):
        raise ValueError(f"{combination_type} needs a density in (0, 1], got {density}")
    if combination_type in THROUGH_PEFT:
        model.add_weighted_adapter(adapters, list(weights), adapter_name, combination_type=combination_type,
                                   density=density)
        return adapter_name
    _add_factors(model, adapters, weights, adapter_name, combination_type)
    return adapter_name


@torch.no_grad()
def _add_factors(model, adapters, weights, adapter_name, combination_type) -> None:
    import dataclasses

    ranks = [model.peft_config[a].r for a in adapters]
    rank = sum(ranks) if combination_type == "cat" else ranks[0]
    merge = cat_factors if combination_type == "cat" else linear_factors
    config = dataclasses.replace(model.peft_config[adapters[0]], r=rank, lora_alpha=rank, alpha_pattern={},
                                 rank_pattern={}, inference_mode=True)
    model.add_adapter(adapter_name, config)
    for layer in lora_layers(model).values():
        held = [a for a in adapters if a in layer.lora_A]
        if not held:
            continue
        factors = [(layer.lora_A[a].weight, layer.lora_B[a].weight, layer.scaling[a]) for a in held]
        a, b = merge(factors, [w for a_, w in zip(adapters, weights) if a_ in held])
        layer.lora_A[adapter_name].weight.zero_()[: a.shape[0]] = a
        layer.lora_B[adapter_name].weight.zero_()[:, : b.shape[1]] = b


@torch.no_grad()
def cross_term_share(model, adapters: list[str], weights: list[float], merged: str) -> float:
    """How far ``merged``'s update is from task arithmetic ``Σ w_k ΔW_k``: ‖ΔW_merged − Σ w_k ΔW_k‖ / ‖Σ w_k ΔW_k‖
    over all LoRA layers (0 for ``cat``; for ``linear`` the share of the cross terms ``B_j A_k``)."""
    merged_deltas = delta_weights(model, merged)
    per_adapter = [delta_weights(model, a) for a in adapters]
    gap = total = 0.0
    for name, delta in merged_deltas.items():
        target = sum(w * d[name] for w, d in zip(weights, per_adapter))
        gap += float((delta - target).pow(2).sum())
        total += float(target.pow(2).sum())
    return (gap / total) ** 0.5 if total else 0.0
