"""labkit.memory on S²-Attn (LongLoRA's shifted sparse attention): the grouped attention term, estimated and measured."""

import pytest

from labkit.memory import Architecture, estimate_memory, measure_memory

TINY = Architecture("tiny-llama-gqa", "llama", 64, 160, 2, 4, 2, 16, 1000, True)
TINY_QWEN = Architecture("tiny-qwen2-untied", "qwen2", 64, 128, 2, 4, 1, 16, 800, False, attention_bias=True)
STATE_TERMS = ("weights", "quant_constants", "trainable_weights", "gradients", "optimizer_states")


@pytest.mark.parametrize("arch", [TINY, TINY_QWEN], ids=lambda a: a.name)
@pytest.mark.parametrize("method, precision", [("full", "fp32"), ("lora", "bf16-mixed"), ("full", "bf16")])
@pytest.mark.parametrize("seq_len, groups", [(32, 4), (64, 4), (64, 2)])
def test_s2_attention_is_estimated_at_two_lengths(arch, method, precision, seq_len, groups):
    options = dict(method=method, precision=precision, attn_implementation="eager", batch_size=2, seq_len=seq_len, r=4,
                   attention_groups=groups)
    estimated = estimate_memory(arch, device="cpu", **options).breakdown
    measured = measure_memory(arch, device="cpu", steps=1, **options).breakdown
    for term in STATE_TERMS:
        assert estimated[term] == measured[term], term
    assert estimated["activations"] == pytest.approx(measured["activations"], rel=0.05)
    assert estimated["logits"] == pytest.approx(measured["logits"], rel=0.10)


def _activations(attn, groups, seq_len, arch="Llama-2-7B"):
    return estimate_memory(arch, method="lora", attn_implementation=attn, attention_groups=groups,
                           seq_len=seq_len).breakdown["activations"]


def test_eager_s2_keeps_a_groups_probabilities_instead_of_the_whole_row():
    n, groups = 8192, 4
    full_scores = _activations("eager", 1, n) - _activations("sdpa", 1, n)
    s2_scores = _activations("eager", groups, n) - _activations("sdpa", groups, n)
    assert full_scores > 2 * s2_scores > 0  # the s-wide fp32 and 16-bit probabilities vs one G-wide fp32 copy
    # doubling the length: full attention's score term grows 4x, S²'s (fixed groups count) too, fused kernels 2x
    assert _activations("sdpa", groups, 2 * n) == pytest.approx(2 * _activations("sdpa", groups, n), rel=0.01)
    assert _activations("eager", 1, 2 * n) > 3 * _activations("eager", 1, n)


def test_a_fused_kernel_makes_s2_cost_memory_not_save_it():
    """With sdpa/flash no score matrix is kept: S²'s grouped copies of q, k, v cost a little more, never less."""
    assert _activations("sdpa", 4, 8192) >= _activations("sdpa", 1, 8192)


@pytest.mark.parametrize("arch, options, message", [
    (TINY, dict(seq_len=30, attention_groups=4), r"seq_len 30 must split into that many groups of an even number"),
    (TINY, dict(seq_len=12, attention_groups=4), r"seq_len 12 must split into that many groups of an even number"),
    (TINY, dict(attention_groups=0), r"attention_groups must be an integer >= 1, got 0"),
    (Architecture("odd", "llama", 48, 96, 1, 3, 3, 16, 100, True), dict(seq_len=32, attention_groups=4),
     r"it has 3 attention heads, expected an even number"),
    (TINY, dict(seq_len=32, attention_groups=4, objective="rl", algorithm="grpo", num_generations=2, completion_len=8),
     r"objective 'rl' generates, which S² cannot"),
])
def test_s2_options_are_validated(arch, options, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory(arch, method="lora", **options)


def test_measure_refuses_s2_with_a_fused_kernel_it_does_not_run():
    with pytest.raises(ValueError, match=r"with attention_groups > 1 expected attn_implementation 'eager'"):
        measure_memory(TINY, method="lora", device="cpu", attn_implementation="sdpa", seq_len=32, attention_groups=4)
