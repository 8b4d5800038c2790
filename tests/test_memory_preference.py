"""labkit.memory on preference (DPO) steps: the reference model's bytes, estimated and measured term by term."""

import itertools

import pytest

from labkit.memory import Architecture, TrainingSetup, estimate_memory, measure_memory, resolve
from labkit.memory.estimate import reference_forward_bytes
from labkit.memory.peak import reference_forward_peak

TINY = Architecture("tiny-llama-gqa", "llama", 64, 160, 2, 4, 2, 16, 1000, True)
TINY_QWEN = Architecture("tiny-qwen2-untied", "qwen2", 64, 128, 2, 4, 1, 16, 800, False, attention_bias=True)
STATE_TERMS = ("weights", "quant_constants", "trainable_weights", "gradients", "optimizer_states", "reference")
SHAPES = [(1, 16), (2, 24), (3, 12)]


def _cases():
    grid = itertools.product([TINY, TINY_QWEN], ["full", "lora", "dora", "qlora"], ["model", "precomputed", "none"],
                             [("fp32", "eager"), ("bf16-mixed", "sdpa")])
    cases = []
    for n, (arch, method, reference, (precision, attn)) in enumerate(grid):
        batch, seq = SHAPES[n % len(SHAPES)]
        options = dict(method=method, objective="preference", reference=reference, precision=precision,
                       attn_implementation=attn, batch_size=batch, seq_len=seq, r=4,
                       gradient_checkpointing="full" if n % 4 == 3 else "none")
        cases.append(pytest.param(arch, options, id=f"{arch.name}-{method}-ref_{reference}-{precision}-{attn}-b{batch}s{seq}"))
    return cases


@pytest.mark.parametrize("arch, options", _cases())
def test_a_preference_step_is_estimated_term_by_term(arch, options):
    estimated = estimate_memory(arch, device="cpu", **options).breakdown
    measured = measure_memory(arch, device="cpu", steps=1, **options).breakdown
    assert set(measured) <= set(estimated) and "reference" in measured
    for term in STATE_TERMS:
        assert estimated[term] == measured[term], term
    for term in ("activations", "logits"):
        assert estimated[term] == pytest.approx(measured[term], rel=0.10), term


@pytest.mark.parametrize("precision, width", [("fp32", 4), ("bf16-mixed", 2), ("bf16", 2)])
def test_a_reference_model_costs_a_copy_of_the_weights_for_full_fine_tuning_and_nothing_for_adapters(precision, width):
    arch = resolve("Llama-3.1-8B")
    options = dict(objective="preference", precision=precision, batch_size=2, seq_len=512)
    full = estimate_memory(arch, method="full", reference="model", **options).breakdown
    assert full["reference"] == arch.num_parameters() * width == full["weights"]
    for method in ("lora", "qlora"):  # TRL disables the adapter: the policy's own base is the reference
        assert estimate_memory(arch, method=method, reference="model", **options).breakdown["reference"] == 0
    precomputed = estimate_memory(arch, method="full", reference="precomputed", **options).breakdown["reference"]
    assert precomputed == 2 * 2 * 4  # one fp32 log-prob per chosen and per rejected sequence


@pytest.mark.parametrize("method", ["full", "lora"])
def test_measured_reference_is_a_weight_copy_for_full_and_nothing_for_lora(method):
    options = dict(method=method, objective="preference", precision="bf16-mixed", batch_size=1, seq_len=8, device="cpu", steps=1)
    with_ref = measure_memory(TINY, reference="model", **options).breakdown
    assert with_ref["reference"] == (TINY.num_parameters() * 2 if method == "full" else 0)
    without = measure_memory(TINY, reference="none", **options).breakdown
    assert {t: b for t, b in with_ref.items() if t != "reference"} == {t: b for t, b in without.items() if t != "reference"}


def test_a_preference_step_runs_twice_the_sequences_of_its_batch():
    sft = estimate_memory(TINY, method="full", batch_size=4, seq_len=32).breakdown
    pairs = estimate_memory(TINY, method="full", objective="preference", batch_size=2, seq_len=32).breakdown
    assert pairs["activations"] == sft["activations"]  # 2 pairs = 4 sequences: the same forward
    assert TrainingSetup(method="full", objective="preference", batch_size=3, seq_len=10).tokens == 60


@pytest.mark.parametrize("method, precision", [("full", "fp32"), ("full", "bf16-mixed"), ("lora", "bf16"), ("lora", "fp32")])
@pytest.mark.parametrize("batch_size, seq_len", [(2, 32), (1, 64)])
def test_the_reference_forwards_transient_peak_is_estimated(method, precision, batch_size, seq_len):
    options = dict(objective="preference", reference="model", precision=precision, batch_size=batch_size, seq_len=seq_len)
    measured = reference_forward_peak(TINY, method=method, **options)
    estimated = reference_forward_bytes(TINY, TrainingSetup(method=method, **options))
    assert estimated == pytest.approx(measured, rel=0.10)
    # it can set the step's peak: its fp32 log-softmax comes on top of what the backward's logits need
    report = estimate_memory(TINY, method=method, device="cpu", **options)
    assert report.breakdown["transient"] >= estimated
    plain = estimate_memory(TINY, method=method, device="cpu", **{**options, "reference": "precomputed"})
    assert report.breakdown["transient"] > plain.breakdown["transient"]


def test_sft_reports_no_reference_term():
    assert "reference" not in estimate_memory(TINY, method="lora").breakdown
    assert "reference" not in measure_memory(TINY, method="lora", device="cpu", steps=1, batch_size=1, seq_len=8).breakdown


@pytest.mark.parametrize("options, message", [
    (dict(objective="dpo"), r"objective 'dpo' is not supported; expected one of 'sft', 'preference'"),
    (dict(objective="preference", reference="copy"), r"reference 'copy' is not supported; expected one of 'none', 'model'"),
    (dict(reference="model"), r"reference 'model' needs objective 'preference'"),
])
def test_preference_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory(TINY, method="full", **options)
