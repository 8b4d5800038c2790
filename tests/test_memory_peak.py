import math

import pytest
import torch

from labkit.paths import BASE_DIR
from labkit.memory import estimate_memory, measure_memory, step_cost, step_peak_bytes


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


@pytest.mark.slow
@pytest.mark.parametrize("lever", [dict(gradient_checkpointing=True), dict(batch_size=2, accumulation=4),
                                   dict(optimizer="adamw_8bit"), dict(seq_len=18)])
def test_each_memory_lever_lowers_the_measured_peak(base, lever):
    baseline = step_cost(base[0], batch_size=8, seq_len=36, timed_steps=1)
    pulled = step_cost(base[0], **(dict(batch_size=8, seq_len=36, timed_steps=1) | lever))
    assert pulled.peak_bytes < baseline.peak_bytes
    assert baseline.seconds > 0 and baseline.tokens == 8 * 36


def test_accumulation_counts_every_micro_batchs_tokens(base):
    cost = step_cost(base[0], batch_size=2, seq_len=8, accumulation=3, timed_steps=0)
    assert cost.tokens == 2 * 8 * 3 and math.isnan(cost.seconds)


@pytest.mark.parametrize("options, message", [
    (dict(accumulation=0), "accumulation must be an integer >= 1"),
    (dict(batch_size=True), "batch_size must be an integer >= 1"),
    (dict(optimizer="lion"), "optimizer must be 'adamw_torch' or 'adamw_8bit'"),
])
def test_step_cost_rejects_a_setup_it_cannot_run(base, options, message):
    with pytest.raises(ValueError, match=message):
        step_cost(base[0], **(dict(batch_size=2, seq_len=8) | options))


def test_the_tracker_follows_a_model_called_twice_in_one_step():
    """KTO calls policy and reference twice per step (its rows, then mismatched ones): the peak is still measured."""
    from labkit.memory.peak import TotalsTracker, peak_bytes

    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    x = torch.randn(32, 64)
    once = TotalsTracker()
    once.track_external(model)
    with once:
        model(x).sum().backward()
    twice = TotalsTracker()
    twice.track_external(model)
    with twice:
        (model(x).sum() + model(x).sum()).backward()
    assert peak_bytes(twice) > peak_bytes(once) > 0  # both forwards' activations live until backward


@pytest.mark.slow
def test_the_callback_measures_a_grpo_step_that_samples_then_scores_in_chunks(base, tmp_path):
    """GRPO's step runs the policy once per sampled token in generate(), then again for the loss: the peak is
    still measured, and holds at least the weights, their gradients and AdamW's two moments."""
    import copy

    import labkit
    from labkit import tasks
    from labkit.memory import PeakMemory
    from labkit.rl import exact_match_reward, grpo_config, train_grpo

    model, tokenizer = copy.deepcopy(base[0]), base[1]
    prompts = tasks.verifiable_tasks(4, fmt="completion", tasks=["flip"]).remove_columns(["completion"])
    config = grpo_config(labkit.get_profile("cpu-tiny"), prompts_per_step=2, num_generations=2, max_completion_length=4,
                         max_steps=2, output_dir=str(tmp_path))
    peak = PeakMemory(step=1)
    train_grpo(model, tokenizer, prompts, [exact_match_reward], config, callbacks=[peak])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert peak.peak_bytes >= 4 * weights  # weights, gradients, two fp32 moments
    assert peak.batch_shape[0] == 4  # the rows the policy ran on: 2 prompts x 2 samples each
