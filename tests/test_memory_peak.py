import pytest

from labkit.paths import BASE_DIR
from labkit.memory import estimate_memory, measure_memory, step_peak_bytes


@pytest.mark.slow
def test_the_peak_tracker_agrees_with_labkit_memory_on_a_plain_step(base):
    """The instrument behind 'peak MiB': on a plain step it lies between the kept terms and the estimate."""
    peak = step_peak_bytes(base[0], (16, 36))
    options = dict(method="full", precision="fp32", batch_size=16, seq_len=36)
    kept = measure_memory(BASE_DIR / "config.json", **options).total_bytes
    estimated = estimate_memory(BASE_DIR / "config.json", device="cpu", **options).total_bytes
    assert kept <= peak <= estimated
    assert peak < 1.1 * kept


def test_unknown_loss_is_rejected(base):
    with pytest.raises(ValueError, match="loss must be"):
        step_peak_bytes(base[0], (2, 8), loss="liger")


@pytest.mark.slow
def test_trls_fused_lm_head_step_is_measured_separately(base):
    plain = step_peak_bytes(base[0], (16, 36))
    fused = step_peak_bytes(base[0], (16, 36), loss="trl-fused")
    assert fused > 1.5 * plain  # exact tensor accounting: 240 vs 129 MiB (see the comparison chapter)
