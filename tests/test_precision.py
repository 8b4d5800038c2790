"""labkit.precision: updates lost to 16-bit storage, fp16 underflow, and GradScaler's skipped steps."""

import copy
import math

import pytest
import torch

import labkit
from labkit.precision import adamw_updates, lost_update_fraction, rounds_away, train_steps, underflow_fraction


@pytest.mark.parametrize("weight, update, dtype, lost", [
    (1.0, 1e-3, torch.bfloat16, True),    # bf16's neighbours of 1.0 are 2**-7 apart: half of that is 3.9e-3
    (1.0, 5e-3, torch.bfloat16, False),
    (1.0, 1e-3, torch.float16, False),    # fp16's are 2**-10 apart: 4.9e-4 is the cut
    (1.0, 2e-4, torch.float16, True),
    (1.0, 2e-5, torch.float32, False),
    (0.0, 1e-30, torch.bfloat16, False),  # zero plus anything representable is that thing
    (1.0, 0.0, torch.bfloat16, False),    # no update, nothing lost
])
def test_an_update_rounds_away_below_half_the_gap_to_the_next_number(weight, update, dtype, lost):
    assert bool(rounds_away(torch.tensor([weight]), torch.tensor([update]), dtype)) is lost


@pytest.fixture(scope="module")
def model_and_batch():
    model, tokenizer = labkit.load_base(dtype=torch.float32)
    ids = tokenizer(["def f(x):\n    return x * 2\n", "import os\nprint(os.getcwd())\n"], padding=True, return_tensors="pt")
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    return model.train(), {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "labels": labels}


@pytest.mark.slow
def test_fewer_significant_bits_lose_more_of_a_small_learning_rates_updates(model_and_batch):
    model, batch = model_and_batch
    before, updates = adamw_updates(copy.deepcopy(model), batch, lr=2e-5)
    lost = {name: lost_update_fraction(before, updates, dtype) for name, dtype in
            [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]}
    assert lost["fp32"] < 1e-3 < lost["fp16"] < lost["bf16"]


def test_adamw_updates_refuses_weights_already_in_16_bits(model_and_batch):
    model, batch = model_and_batch
    with pytest.raises(ValueError, match="needs fp32 weights"):
        adamw_updates(copy.deepcopy(model).to(torch.bfloat16), batch, lr=1e-4)


@pytest.mark.slow
def test_scaling_the_loss_keeps_gradients_that_fp16_flushes_to_zero(model_and_batch):
    model, batch = model_and_batch
    unscaled = underflow_fraction(model, batch, scale=1.0)
    scaled = underflow_fraction(model, batch, scale=2.0**12)
    assert unscaled > scaled >= 0.0


@pytest.mark.slow
def test_a_scale_too_large_skips_steps_and_halves_until_gradients_are_finite(model_and_batch):
    model, batch = model_and_batch
    trained = copy.deepcopy(model)
    history = train_steps(trained, [batch] * 14, lr=1e-4, precision="fp16-mixed", init_scale=2.0**24, growth_interval=3)
    assert history[0]["skipped"] and history[0]["scale"] == 2.0**24
    first_taken = next(h["step"] for h in history if not h["skipped"])
    assert all(history[s]["scale"] == 2.0**24 / 2**s for s in range(first_taken + 1))
    assert all(h["loss"] == history[0]["loss"] for h in history[:first_taken + 1])  # skipped steps leave the weights
    assert history[-1]["loss"] < history[0]["loss"]
    grown = [h for a, h in zip(history, history[1:]) if h["scale"] > a["scale"]]
    assert grown, "after growth_interval steps without overflow the scaler doubles the scale"


@pytest.mark.slow
@pytest.mark.parametrize("precision, weights", [("fp32", torch.float32), ("bf16-mixed", torch.float32),
                                                ("bf16", torch.bfloat16)])
def test_each_precision_trains_and_keeps_its_weights_where_it_says(model_and_batch, precision, weights):
    model, batch = model_and_batch
    trained = copy.deepcopy(model)
    history = train_steps(trained, [batch] * 4, lr=1e-3, precision=precision)
    assert history[-1]["loss"] < history[0]["loss"] and "scale" not in history[0]
    assert {p.dtype for p in trained.parameters()} == {weights}


@pytest.mark.slow
def test_pure_bf16_at_a_small_rate_leaves_most_weights_where_they_were(model_and_batch):
    model, batch = model_and_batch
    pure, mixed = copy.deepcopy(model), copy.deepcopy(model)
    start = {n: p.detach().to(torch.bfloat16) for n, p in model.named_parameters()}
    train_steps(pure, [batch] * 3, lr=2e-5, precision="bf16")
    train_steps(mixed, [batch] * 3, lr=2e-5, precision="bf16-mixed")
    unchanged = lambda m: sum(int((p.detach().to(torch.bfloat16) == start[n]).sum()) for n, p in m.named_parameters())
    assert unchanged(pure) > unchanged(mixed)


def test_mixed_precision_refuses_16_bit_masters(model_and_batch):
    model, batch = model_and_batch
    with pytest.raises(ValueError, match="needs fp32 weights"):
        train_steps(copy.deepcopy(model).to(torch.bfloat16), [batch], lr=1e-4, precision="bf16-mixed")
    with pytest.raises(ValueError, match="precision 'int8' is not supported"):
        train_steps(model, [batch], lr=1e-4, precision="int8")


@pytest.mark.slow
def test_pure_fp16_adamw_turns_weights_nan_after_one_step(model_and_batch):
    # AdamW's eps (1e-8) is below fp16's smallest number: where a gradient is 0 (an unused token's
    # embedding row) the update is 0 / 0.
    model, batch = model_and_batch
    assert torch.tensor(1e-8, dtype=torch.float16) == 0
    trained = copy.deepcopy(model)
    history = train_steps(trained, [batch] * 2, lr=1e-3, precision="fp16")
    assert math.isfinite(history[0]["loss"]) and math.isnan(history[1]["loss"])
    assert all(p.dtype == torch.float16 for p in trained.parameters())


def test_the_reported_gradient_norm_is_the_unclipped_global_norm(model_and_batch):
    model, batch = model_and_batch
    reference = copy.deepcopy(model)
    reference(**batch).loss.backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters() if p.grad is not None]))
    history = train_steps(copy.deepcopy(model), [batch], lr=1e-4, max_grad_norm=1e-3)
    assert history[0]["grad_norm"] == pytest.approx(float(expected), rel=1e-5)
    assert history[0]["grad_norm"] > 1e-3  # so the clip below acts


@pytest.mark.slow
def test_clipping_changes_the_trajectory_only_when_the_threshold_is_reached(model_and_batch):
    model, batch = model_and_batch
    runs = {}
    for threshold in (None, 1e9, 1e-3):
        trained = copy.deepcopy(model)
        train_steps(trained, [batch] * 3, lr=1e-3, max_grad_norm=threshold)
        runs[threshold] = torch.cat([p.detach().flatten() for p in trained.parameters()])
    assert torch.equal(runs[None], runs[1e9])
    assert not torch.allclose(runs[None], runs[1e-3])


@pytest.mark.parametrize("threshold", [0.0, -1.0])
def test_a_clipping_threshold_must_be_positive(model_and_batch, threshold):
    model, batch = model_and_batch
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        train_steps(model, [batch], lr=1e-4, max_grad_norm=threshold)
