"""S²-Attn (LongLoRA's shifted sparse attention) in a measured step: ``labkit.longcontext``'s implementation,
registered for a group count so that ``measure_memory`` trains with it."""

from __future__ import annotations


def register_s2(groups: int) -> str:
    """Register ``labkit.longcontext``'s S²-Attn with ``groups`` groups a sequence (``group_fraction = 1 / groups``);
    returns the ``attn_implementation`` name to build with.

    Its group tensors are 5-D, ``(batch, heads, groups, G, head_dim)``, which PyTorch's fused SDPA kernels do not
    take: SDPA runs its math kernel and keeps each group's probabilities, as eager attention keeps the whole
    matrix -- so ``measure_memory`` measures it as ``attn_implementation='eager'``.
    """
    from labkit.longcontext import S2Config, register_s2_attention

    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
        raise ValueError(f"groups must be an integer >= 2, got {groups!r}")
    return register_s2_attention(S2Config(group_fraction=1 / groups), f"s2_attention_{groups}")
