"""labkit.reward: the conversion keeps the backbone, scores equal TRL's RewardTrainer, pair accuracy and the GRPO reward function."""

import copy
import inspect
import math

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset

import labkit
from labkit import tasks
from labkit.eval import wilson_interval
from labkit.reward import (
    auc,
    pair_accuracy,
    reward_config,
    reward_function,
    reward_model_from,
    reward_scores,
    sequence_ids,
    train_reward_model,
)


@pytest.fixture(scope="module")
def reward_model(base):
    """The shipped model as a reward model (random score head, seed 0)."""
    lm, tokenizer = base
    return reward_model_from(lm, tokenizer)


def test_conversion_keeps_every_backbone_weight_and_adds_one_output(base, reward_model):
    lm, tokenizer = base
    backbone, converted = lm.model.state_dict(), reward_model.model.state_dict()
    assert backbone.keys() == converted.keys()
    for name, weight in backbone.items():
        assert torch.equal(weight, converted[name]), name
    assert reward_model.score.weight.shape == (1, lm.config.hidden_size)
    assert reward_model.config.num_labels == 1
    assert reward_model.config.pad_token_id == tokenizer.pad_token_id
    assert reward_model.dtype == torch.float32 and reward_model.device == lm.device and not reward_model.training
    state = torch.random.get_rng_state()
    again = reward_model_from(lm, tokenizer)  # the head is drawn from the seed, leaving the caller's RNG alone
    assert torch.equal(again.score.weight, reward_model.score.weight)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not torch.equal(reward_model_from(lm, tokenizer, seed=1).score.weight, reward_model.score.weight)


def test_conversion_refuses_a_peft_model(base):
    from peft import LoraConfig, get_peft_model

    lm, tokenizer = base
    peft_model = get_peft_model(copy.deepcopy(lm), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="merge its adapter first"):
        reward_model_from(peft_model, tokenizer)


def test_standard_rows_get_one_end_of_sequence_token_and_mixed_rows_are_refused(tokenizer):
    eos = tokenizer.eos_token_id
    ids = sequence_ids(tokenizer, "Q:", " a")
    assert ids == tokenizer("Q: a")["input_ids"] + [eos]
    assert sequence_ids(tokenizer, "Q:", " a" + tokenizer.eos_token) == ids
    with pytest.raises(TypeError, match="both be strings .* or both lists of messages"):
        sequence_ids(tokenizer, "Q:", [{"role": "assistant", "content": "a"}])


# --- against TRL 1.16's RewardTrainer --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_scores_and_accuracy_equal_what_the_trained_reward_trainer_computes(base, fmt):
    lm, tokenizer = base
    train = tasks.preference_pairs(1, fmt=fmt)  # one pair per task, completions of different lengths
    held_out = tasks.preference_pairs(1, split="test", fmt=fmt)
    config = reward_config(labkit.get_profile("cpu-tiny"), max_steps=2, per_device_train_batch_size=len(train),
                           per_device_eval_batch_size=len(held_out), learning_rate=1e-3, disable_tqdm=True)
    trainer = train_reward_model(reward_model_from(lm, tokenizer), tokenizer, train, config, eval_dataset=held_out)
    model = trainer.model

    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(held_out))])  # TRL's tokens and padding
    with torch.no_grad():
        _, outputs = trainer.compute_loss(model, trainer._prepare_inputs(batch), return_outputs=True)
    trl_chosen, trl_rejected = outputs.logits.squeeze(-1).chunk(2)
    chosen = reward_scores(model, tokenizer, held_out["prompt"], held_out["chosen"], batch_size=2)
    rejected = reward_scores(model, tokenizer, held_out["prompt"], held_out["rejected"], batch_size=3)
    torch.testing.assert_close(chosen, trl_chosen, rtol=0, atol=1e-5)
    torch.testing.assert_close(rejected, trl_rejected, rtol=0, atol=1e-5)
    assert chosen.std() > 0  # the rows do differ

    metrics = trainer.evaluate()  # one batch holds every pair, so TRL's batch means are the overall ones
    ours = pair_accuracy(chosen, rejected)
    assert metrics["eval_accuracy"] == pytest.approx(ours["accuracy"], abs=1e-6)
    assert metrics["eval_margin"] == pytest.approx((chosen - rejected).mean().item(), abs=1e-5)


@pytest.mark.slow
def test_a_short_run_separates_a_separable_set(base):
    lm, tokenizer = base
    prompts = [f"Item {i}:" for i in range(48)]
    pairs = Dataset.from_dict({"prompt": prompts, "chosen": [" good"] * 48, "rejected": [" bad"] * 48})
    config = reward_config(labkit.get_profile("cpu-tiny"), max_steps=8, per_device_train_batch_size=8,
                           learning_rate=1e-3, logging_steps=1, disable_tqdm=True)
    trainer = train_reward_model(reward_model_from(lm, tokenizer), tokenizer, pairs.select(range(40)), config)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[0] == pytest.approx(math.log(2), abs=0.1)  # a fresh head scores both alike
    assert losses[-1] < 0.5 * losses[0]
    held_out = pairs.select(range(40, 48))
    result = pair_accuracy(reward_scores(trainer.model, tokenizer, held_out["prompt"], held_out["chosen"]),
                           reward_scores(trainer.model, tokenizer, held_out["prompt"], held_out["rejected"]))
    assert result["accuracy"] == 1.0


def test_scores_do_not_depend_on_batching_and_follow_the_model(reward_model, tokenizer):
    rows = tasks.preference_pairs(1, fmt="completion")
    one = reward_scores(reward_model, tokenizer, rows["prompt"], rows["chosen"], batch_size=1)
    all_ = reward_scores(reward_model, tokenizer, rows["prompt"], rows["chosen"], batch_size=5)
    torch.testing.assert_close(one, all_, rtol=0, atol=1e-5)
    assert one.shape == (5,) and one.dtype == torch.float32 and one.device.type == "cpu"


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=["a", "b"], completions=[" c"]), "2 prompts for 1 completions"),
    (dict(prompts=["a"], completions=[" c"], batch_size=0), "batch_size must be >= 1, got 0"),
])
def test_reward_scores_checks_its_arguments(reward_model, tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        reward_scores(reward_model, tokenizer, **kwargs)


def test_train_reward_model_checks_the_model_and_the_columns(base, reward_model, tokenizer):
    config = reward_config(labkit.get_profile("cpu-tiny"), max_steps=1)
    pairs = tasks.preference_pairs(1, fmt="completion", tasks=["add"])
    with pytest.raises(ValueError, match=r"needs one output \(num_labels=1\)"):
        train_reward_model(base[0], tokenizer, pairs, config)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['rejected'\]"):
        train_reward_model(reward_model, tokenizer, pairs.remove_columns("rejected"), config)


# --- pair accuracy, AUC ------------------------------------------------------------------------------------------------

PAIR_CASES = [  # chosen, rejected, wins, ties, losses
    ([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], 1, 1, 1),
    ([1.0, 1.0], [0.0, -1.0], 2, 0, 0),
    ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], 0, 4, 0),
    ([0.0], [0.1], 0, 0, 1),
]


@pytest.mark.parametrize("chosen, rejected, wins, ties, losses", PAIR_CASES)
def test_pair_accuracy_counts_wins_ties_and_losses(chosen, rejected, wins, ties, losses):
    result = pair_accuracy(torch.tensor(chosen), rejected)
    n = len(chosen)
    low, high = wilson_interval(wins, n)
    assert result == {"n": n, "wins": wins, "ties": ties, "losses": losses, "accuracy": wins / n,
                      "ci_low": low, "ci_high": high}


@pytest.mark.parametrize("chosen, rejected, message", [
    ([1.0, 2.0], [1.0], "2 chosen scores for 1 rejected ones"),
    ([], [], "no pairs to score"),
    ([float("nan")], [0.0], "scores contain NaN"),
])
def test_pair_accuracy_rejects_bad_input(chosen, rejected, message):
    with pytest.raises(ValueError, match=message):
        pair_accuracy(chosen, rejected)


@pytest.mark.parametrize("positive, negative, expected", [
    ([2.0, 3.0], [1.0], 1.0),
    ([1.0], [2.0, 3.0], 0.0),
    ([1.0, 3.0], [2.0], 0.5),
    ([1.0], [1.0, 0.0], 0.75),  # a tie counts half
])
def test_auc_is_the_chance_a_positive_outscores_a_negative(positive, negative, expected):
    assert auc(positive, negative) == pytest.approx(expected)


@pytest.mark.parametrize("convert", [list, np.array, pd.Series, torch.tensor], ids=["list", "numpy", "pandas", "torch"])
def test_scores_may_come_in_any_container(convert):
    assert pair_accuracy(convert([2.0, 0.0]), convert([1.0, 0.0]))["wins"] == 1
    assert auc(convert([2.0, 0.0]), convert([1.0])) == 0.5


# --- the reward function for GRPO ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_reward_function_has_grpos_signature_and_returns_the_scores(reward_model, tokenizer, fmt):
    rows = tasks.preference_pairs(1, fmt=fmt, tasks=["flip", "add"])
    reward = reward_function(reward_model, tokenizer, batch_size=1)
    parameters = inspect.signature(reward).parameters
    assert list(parameters)[:2] == ["prompts", "completions"]
    assert parameters["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    assert reward.__name__ == "learned_reward"
    values = reward(prompts=rows["prompt"], completions=rows["chosen"], task=rows["task"], completion_ids=[[1], [2]])
    assert isinstance(values, list) and all(isinstance(v, float) for v in values)
    expected = reward_scores(reward_model, tokenizer, rows["prompt"], rows["chosen"]).tolist()
    assert values == pytest.approx(expected, abs=1e-5)


# --- the config --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile_name, bf16, use_cpu, steps, batch, max_length", [
    ("cpu-tiny", False, True, 80, 16, 256),
    ("gpu-rehearsal", True, True, 2, 4, 128),
])
def test_reward_config_follows_the_profile(profile_name, bf16, use_cpu, steps, batch, max_length):
    config = reward_config(labkit.get_profile(profile_name))
    assert (config.bf16, config.fp16, config.use_cpu) == (bf16, False, use_cpu)
    assert (config.max_steps, config.per_device_train_batch_size, config.max_length) == (steps, batch, max_length)
    assert config.save_strategy == "no" and config.report_to == [] and config.seed == 0
    assert not config.gradient_checkpointing
    assert reward_config(labkit.get_profile(profile_name), max_steps=3, learning_rate=0.5).learning_rate == 0.5
