"""What the memory tests share: the estimate against the measurement, term by term."""

from labkit.memory import estimate_memory, measure_memory

STATE_TERMS = ("weights", "quant_constants", "trainable_weights", "gradients", "optimizer_states")
"""Terms that are sums of tensor sizes: the estimate must match them exactly."""


def relative_errors(arch, options) -> dict[str, float]:
    """|estimate - measured| / measured per term on the CPU (0 where both are 0)."""
    estimated = estimate_memory(arch, device="cpu", **options).breakdown
    measured = measure_memory(arch, device="cpu", steps=1, **options).breakdown
    assert set(measured) <= set(estimated)
    return {t: abs(estimated[t] - m) / m if m else float(estimated[t] != 0) for t, m in measured.items()}
