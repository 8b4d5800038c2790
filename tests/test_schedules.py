"""labkit.schedules: transformers' schedulers stepped, against each schedule's formula written out."""

import math

import pytest

from labkit.schedules import SCHEDULES, factor, loss_spikes, scheduler_kwargs, trajectory


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps, warmup", [(80, 4), (100, 10), (7, 0)])
def test_transformers_rates_equal_the_written_out_formula_at_every_step(name, steps, warmup):
    rates = trajectory(name, steps=steps, warmup_steps=warmup, learning_rate=3e-4)
    assert len(rates) == steps
    for step, rate in enumerate(rates):
        assert rate == pytest.approx(3e-4 * factor(name, step, steps=steps, warmup_steps=warmup), abs=1e-12), (name, step)


@pytest.mark.parametrize("name, at_end", [("linear", 0.0), ("cosine", 0.0), ("constant_with_warmup", 1.0),
                                          ("cosine_with_min_lr", 0.1), ("warmup_stable_decay", 0.1)])
def test_each_schedule_warms_up_and_ends_where_its_definition_says(name, at_end):
    steps, warmup = 200, 10
    start = 0.1 if name == "warmup_stable_decay" else 0.0  # transformers' WSD warms up from its floor
    assert trajectory(name, steps=steps, warmup_steps=warmup)[0] == pytest.approx(start)
    assert factor(name, warmup, steps=steps, warmup_steps=warmup) == pytest.approx(1.0)
    assert factor(name, steps - 1, steps=steps, warmup_steps=warmup) == pytest.approx(at_end, abs=0.02)


def test_wsd_holds_the_peak_until_its_decay_share():
    steps, warmup = 100, 5
    decay = scheduler_kwargs("warmup_stable_decay", steps, warmup)["num_decay_steps"]
    stable = [factor("warmup_stable_decay", s, steps=steps, warmup_steps=warmup) for s in range(warmup, steps - decay)]
    assert stable == [1.0] * len(stable) and factor("warmup_stable_decay", steps - decay + 1, steps=steps, warmup_steps=warmup) < 1


def test_cosine_is_half_way_at_the_middle_of_its_decay():
    assert factor("cosine", 55, steps=100, warmup_steps=10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


@pytest.mark.parametrize("kwargs, message", [(dict(name="step"), "unknown schedule 'step'"),
                                             (dict(name="linear", warmup_steps=80), "0 <= warmup_steps < steps")])
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        trajectory(**{"steps": 80, "warmup_steps": 4, **kwargs})


def test_loss_spikes_are_the_losses_far_above_the_recent_median():
    losses = [3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 6.0, 2.4, 2.3, 2.2, 2.1, 4.0]
    assert loss_spikes(losses, window=5, ratio=1.5) == [6, 11]
    assert loss_spikes([3.0, 2.0, 1.0] * 5, window=5, ratio=1.4) == [6, 9, 12]  # 3.0 after a median of 2.0
    with pytest.raises(ValueError, match="ratio > 1"):
        loss_spikes(losses, ratio=1.0)
