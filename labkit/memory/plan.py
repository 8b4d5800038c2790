"""How many GPUs, sharded how: the smallest setup ``estimate_memory`` says fits, for a model, method and GPU size."""

from __future__ import annotations

from typing import Any

from labkit.memory.estimate import CUDA_OVERHEAD_BYTES, estimate_memory
from labkit.memory.report import GIB

STRATEGIES: dict[str, dict] = {
    "data parallel": dict(sharding="none"),
    "ZeRO-1": dict(sharding="zero1"),
    "ZeRO-2 / FSDP SHARD_GRAD_OP": dict(sharding="zero2"),
    "ZeRO-3 / FSDP FULL_SHARD": dict(sharding="zero3"),
    "ZeRO-3 + optimizer offload": dict(sharding="zero3", offload_optimizer=True),
}
"""Strategies in order of rising communication (and, for offload, CPU work): a plan picks the first that fits."""

GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
"""Device counts a plan tries: one GPU, then powers of two up to eight nodes of eight."""


def smallest_fit(model: Any, *, method: str, gpu_gib: float, counts: tuple[int, ...] = GPU_COUNTS,
                 strategies: dict[str, dict] | None = None, **options) -> dict:
    """The fewest GPUs of ``gpu_gib`` GiB, and the first strategy at that count, whose per-device estimate fits.

    Tries each count of ``counts`` in turn and, at each, every strategy of :data:`STRATEGIES` in order
    (one GPU: no sharding). ``options``: ``estimate_memory``'s setup (batch_size per device, seq_len,
    precision, gradient_checkpointing, ...). A 4-bit base (``qlora``) shards like any weights, as
    FSDP with QLoRA does (Answer.AI's FSDP+QLoRA, 2024). Returns the count,
    strategy and estimated GiB per device (with :data:`CUDA_OVERHEAD_BYTES`), or a count of ``None`` when
    nothing up to ``max(counts)`` fits.
    """
    if gpu_gib <= 0:
        raise ValueError(f"gpu_gib must be > 0, got {gpu_gib}")
    strategies = strategies or STRATEGIES
    for count in counts:
        for name, strategy in strategies.items():
            if count == 1 and strategy != {"sharding": "none"}:
                continue
            report = estimate_memory(model, method=method, world_size=count, **strategy, **options)
            needed = (report.total_bytes + CUDA_OVERHEAD_BYTES) / GIB
            if needed <= gpu_gib:
                return {"gpus": count, "strategy": name, "GiB per GPU": needed}
    return {"gpus": None, "strategy": f"none fits on {max(counts)}", "GiB per GPU": float("nan")}
