"""labkit.memory on RL steps (GRPO, RLOO, PPO): the models held, the KV cache, estimated and measured term by term."""

import pytest

from labkit.memory import Architecture, TrainingSetup, estimate_memory, measure_memory, resolve
from labkit.memory.rl import kv_cache_bytes

TINY = Architecture("tiny-llama-gqa", "llama", 64, 160, 2, 4, 2, 16, 1000, True)
TINY_QWEN = Architecture("tiny-qwen2-untied", "qwen2", 64, 128, 2, 4, 1, 16, 800, False, attention_bias=True)
STATE_TERMS = ("weights", "quant_constants", "trainable_weights", "gradients", "optimizer_states", "reference",
               "value_model", "reward_model")
RL = dict(objective="rl", batch_size=2, num_generations=2, seq_len=24, completion_len=8, r=4)

CASES = [  # (arch, method, algorithm, reference, reward, precision, attention, checkpointing)
    (TINY, "full", "grpo", "none", "verifier", "fp32", "eager", "none"),
    (TINY, "full", "grpo", "model", "verifier", "bf16-mixed", "sdpa", "none"),
    (TINY_QWEN, "full", "grpo", "model", "verifier", "fp32", "sdpa", "full"),
    (TINY, "lora", "grpo", "model", "verifier", "fp32", "eager", "none"),
    (TINY_QWEN, "lora", "grpo", "model", "verifier", "bf16-mixed", "sdpa", "none"),
    (TINY, "lora", "rloo", "model", "verifier", "bf16-mixed", "sdpa", "full"),
    (TINY, "full", "ppo", "model", "model", "fp32", "eager", "none"),
    (TINY_QWEN, "full", "ppo", "model", "verifier", "bf16-mixed", "sdpa", "none"),
    (TINY, "lora", "ppo", "none", "model", "bf16-mixed", "sdpa", "none"),
]


@pytest.mark.parametrize("arch, method, algorithm, reference, reward, precision, attn, ckpt", CASES,
                         ids=[f"{c[0].name}-{c[1]}-{c[2]}-ref_{c[3]}-{c[4]}-{c[5]}-{c[6]}-ckpt_{c[7]}" for c in CASES])
def test_an_rl_step_is_estimated_term_by_term(arch, method, algorithm, reference, reward, precision, attn, ckpt):
    options = dict(RL, method=method, algorithm=algorithm, reference=reference, reward=reward, precision=precision,
                   attn_implementation=attn, gradient_checkpointing=ckpt)
    estimated = estimate_memory(arch, device="cpu", **options)
    measured = measure_memory(arch, device="cpu", steps=1, **options)
    assert set(measured.breakdown) <= set(estimated.breakdown)
    for term in STATE_TERMS:
        assert estimated.breakdown[term] == measured.breakdown[term], term
    for term in ("activations", "logits"):
        assert estimated.breakdown[term] == pytest.approx(measured.breakdown[term], rel=0.10), term
    assert estimated.phases["kv_cache"] == measured.phases["kv_cache"] > 0


@pytest.mark.parametrize("name, rows, seq_len, precision", [("Llama-3.1-8B", 16, 1024, "bf16-mixed"),
                                                            ("Qwen2.5-0.5B", 8, 300, "fp32")])
def test_the_kv_cache_is_layers_x_2_x_kv_heads_x_head_dim_x_tokens_x_rows_x_bytes(name, rows, seq_len, precision):
    arch = resolve(name)
    setup = TrainingSetup(method="lora", objective="rl", algorithm="grpo", batch_size=rows // 8, num_generations=8,
                          seq_len=seq_len, completion_len=seq_len // 2, precision=precision)
    layers, kv_heads, head_dim = {"Llama-3.1-8B": (32, 8, 128), "Qwen2.5-0.5B": (24, 2, 64)}[name]
    width = {"bf16-mixed": 2, "fp32": 4}[precision]
    assert kv_cache_bytes(arch, setup) == layers * 2 * kv_heads * head_dim * (seq_len - 1) * rows * width


def _total(method, **options):
    return estimate_memory("Llama-3.1-8B", method=method, **{**RL, "seq_len": 1024, "completion_len": 512,
                                                               "num_generations": 8, **options})


def test_ppo_costs_more_than_grpo_with_a_reference_which_costs_more_than_grpo_without():
    ppo = _total("full", algorithm="ppo", reference="model").total_bytes
    grpo_kl = _total("full", algorithm="grpo", reference="model").total_bytes
    grpo = _total("full", algorithm="grpo").total_bytes
    assert ppo > grpo_kl > grpo
    weights = _total("full", algorithm="grpo").breakdown["weights"]
    assert grpo_kl - grpo >= weights  # a second copy of the weights at least


def test_a_lora_reference_costs_no_extra_weights():
    with_ref, without = _total("lora", algorithm="grpo", reference="model"), _total("lora", algorithm="grpo")
    assert with_ref.breakdown["reference"] == 0
    assert {t: with_ref.breakdown[t] for t in STATE_TERMS} == {t: without.breakdown[t] for t in STATE_TERMS}
    assert with_ref.breakdown["activations"] == without.breakdown["activations"]


def test_the_peak_is_the_kept_state_plus_the_largest_phase():
    report = _total("lora", algorithm="ppo", reward="model")
    kept = sum(b for t, b in report.breakdown.items() if t not in ("activations", "logits", "transient"))
    largest = max(report.phases[p] for p in ("generation", "scoring", "training"))
    assert report.total_bytes == kept + largest
    assert report.phases["generation"] > report.phases["kv_cache"] > 0
    assert report.breakdown["reward_model"] > 0 and report.breakdown["value_model"] > report.breakdown["reward_model"]


def test_the_rows_of_an_rl_step_are_prompts_times_generations():
    assert TrainingSetup(method="full", objective="rl", algorithm="grpo", batch_size=3, num_generations=4, seq_len=10,
                         completion_len=4).sequences == 12


@pytest.mark.parametrize("options, message", [
    (dict(objective="rl"), r"objective 'rl' needs an algorithm; expected one of grpo, rloo, ppo"),
    (dict(objective="rl", algorithm="dpo", completion_len=4), r"algorithm 'dpo' is not supported"),
    (dict(objective="rl", algorithm="grpo", num_generations=1, completion_len=4), r"num_generations must be >= 2, got 1"),
    (dict(objective="rl", algorithm="ppo", completion_len=16), r"completion_len must be an integer in \[1, seq_len - 1\]"),
    (dict(objective="rl", algorithm="ppo", completion_len=4, reference="precomputed"), r"reference 'precomputed' cannot apply"),
    (dict(objective="rl", algorithm="ppo", completion_len=4, reward="judge"), r"reward 'judge' is not supported"),
    (dict(algorithm="grpo"), r"algorithm only apply to objective 'rl'; got objective 'sft'"),
    (dict(objective="preference", num_generations=4), r"num_generations only apply to objective 'rl'"),
    (dict(objective="rl", algorithm="ppo", completion_len=4, sharding="zero2", world_size=2), r"estimated on one device"),
])
def test_rl_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory(TINY, method="full", seq_len=16, **options)
