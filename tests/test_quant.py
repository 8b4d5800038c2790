"""4-bit LoRA gradients stay right after generate() on the CPU (the bitsandbytes repacking guard)."""

import bitsandbytes as bnb
import pytest
import torch

from labkit.hardware import cpu_has_avx512_bf16
from labkit.quant import guard_cpu_4bit, linear_weight_bytes, load_4bit, lora_gradient_error_after_generate


def test_lora_gradients_after_generate_equal_an_fp32_dequantized_reference():
    errors = lora_gradient_error_after_generate(guard=True)
    assert len(errors) == 2 * 3 * 4  # A and B of q_proj, v_proj, down_proj in 4 layers
    # bitsandbytes' CPU kernel is not bit-exact with an fp32 matmul of the dequantized weight (up to ~2.4% here)
    assert max(errors.values()) < 0.05, errors


def test_without_the_guard_the_gradients_go_wrong_after_generate():
    """Where the CPU has AVX512-BF16 (this machine's kind), bitsandbytes repacks and training breaks."""
    if not cpu_has_avx512_bf16():
        pytest.skip("this CPU lacks AVX512-BF16: bitsandbytes never repacks, so there is nothing to guard")
    errors = sorted(lora_gradient_error_after_generate(guard=False).values())
    assert errors[len(errors) // 2] > 0.5, errors  # most adapters: no gradient (inf) or one ~100% off


def test_guard_counts_layers_and_refuses_an_already_repacked_model():
    model = load_4bit()
    assert guard_cpu_4bit(model) == 28
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    layer.weight.quant_state.packing_format_for_cpu = True  # as bitsandbytes marks a repacked weight
    with pytest.raises(RuntimeError, match="guard before the first forward"):
        guard_cpu_4bit(model)


def test_unknown_quant_type_is_rejected():
    with pytest.raises(ValueError, match="quant_type must be 'nf4' or 'fp4'"):
        load_4bit(quant_type="int4")


def test_linear_weight_bytes_count_codes_absmax_and_tables():
    import labkit

    full, _ = labkit.load_base()
    n_weights = sum(m.weight.numel() for m in full.modules() if isinstance(m, torch.nn.Linear) and m is not full.lm_head)
    n_layers = 4 * 7
    assert linear_weight_bytes(full) == 4 * n_weights  # fp32, no biases
    nf4 = load_4bit(double_quant=False)
    assert linear_weight_bytes(nf4) == n_weights // 2 + 4 * (n_weights // 64) + n_layers * 16 * 4
    nf4_dq = load_4bit(double_quant=True)
    bits = 8 * linear_weight_bytes(nf4_dq) / n_weights
    tables = n_layers * (16 + 256 + 1) * 4 * 8 / n_weights  # per-layer code tables and offset, in bits per weight
    assert bits == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + tables, rel=1e-3)
