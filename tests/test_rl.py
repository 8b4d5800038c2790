import copy

import datasets
import pytest
import torch

import labkit
from labkit.rl import (
    RL_LEARNING_RATE,
    exact_match_reward,
    expected_zero_variance_share,
    format_reward,
    grpo_config,
    rl_history,
    rloo_config,
    sample_rewards,
    summed_reward,
    train_grpo,
    zero_variance_share,
)


@pytest.mark.parametrize("completion, answer, exact, formatted", [
    (" b, a", "b, a", 1.0, 1.0),
    ("b, a.", "b, a", 1.0, 1.0),           # normalize_answer drops one trailing period
    (" b, a\n", "b, a", 1.0, 1.0),         # trailing whitespace is still one line
    (" b, a\nmore text", "b, a", 1.0, 0.0),  # right answer, but the model ran on
    (" a, b", "b, a", 0.0, 1.0),           # wrong answer, clean format
    (" B, a", "b, a", 0.0, 1.0),           # answers are case-sensitive
    ("", "b, a", 0.0, 0.0),
    ("\n b, a", "b, a", 1.0, 1.0),         # leading newline is stripped, as the scorer strips it
])
def test_reward_functions_on_hand_cases(completion, answer, exact, formatted):
    assert exact_match_reward(prompts=["p"], completions=[completion], answer=[answer]) == [exact]
    assert format_reward(prompts=["p"], completions=[completion]) == [formatted]
    assert summed_reward(exact_match_reward, format_reward)(prompts=["p"], completions=[completion],
                                                             answer=[answer]) == [exact + formatted]


def test_reward_names_and_length_check():
    assert summed_reward(exact_match_reward, name="verifier").__name__ == "verifier"
    assert exact_match_reward.__name__ == "exact_match_reward"  # what GRPO logs: rewards/exact_match_reward/mean
    with pytest.raises(ValueError, match="2 completions for 1 answers"):
        exact_match_reward(prompts=["p", "q"], completions=["a", "b"], answer=["a"])
    with pytest.raises(ValueError, match="at least one"):
        summed_reward()


@pytest.mark.parametrize("make", [grpo_config, rloo_config])
@pytest.mark.parametrize("profile_name, bf16", [("cpu-tiny", False), ("gpu-rehearsal", True)])
def test_configs_carry_profile_precision_and_batch(make, profile_name, bf16):
    profile = labkit.get_profile(profile_name)
    config = make(profile, prompts_per_step=3, num_generations=4, max_completion_length=7)
    assert config.bf16 is bf16 and config.fp16 is False
    assert config.use_cpu is True and config.report_to == []
    assert config.per_device_train_batch_size == 12 and config.num_generations == 4
    assert config.max_completion_length == 7 and config.max_steps == profile.train_steps
    assert config.learning_rate == RL_LEARNING_RATE and config.logging_steps == 1
    assert make(profile, learning_rate=3e-5, max_steps=5).learning_rate == 3e-5


def test_config_keeps_trl_method_defaults():
    profile = labkit.get_profile("cpu-tiny")
    grpo, rloo = grpo_config(profile), rloo_config(profile)
    assert (grpo.beta, grpo.loss_type, grpo.scale_rewards) == (0.0, "dapo", "group")
    assert rloo.beta == 0.05


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_generations=1), "num_generations must be >= 2"),
    (dict(prompts_per_step=0), "prompts_per_step must be >= 1"),
    (dict(max_completion_length=0), "max_completion_length must be >= 1"),
])
def test_configs_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        grpo_config(labkit.get_profile("cpu-tiny"), **kwargs)


@pytest.mark.parametrize("rewards, group, share", [
    ([1, 1, 1, 1, 0, 1, 0, 1], 4, 0.5),
    ([0, 0, 0, 0, 0, 0], 3, 1.0),
    ([0, 1, 1, 0], 2, 0.0),
    ([2.0, 2.0, 1.0, 1.0, 1.0, 0.0], 2, 2 / 3),
])
def test_zero_variance_share(rewards, group, share):
    assert zero_variance_share(rewards, group) == pytest.approx(share)


def test_zero_variance_share_rejects_ragged_groups():
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        zero_variance_share([1, 0, 1], 4)


@pytest.mark.parametrize("rates, group, expected", [
    ([0.5], 2, 0.5),
    ([0.0, 1.0], 8, 1.0),
    ([0.5, 0.1], 8, (2 * 0.5**8 + 0.1**8 + 0.9**8) / 2),
])
def test_expected_zero_variance_share(rates, group, expected):
    assert expected_zero_variance_share(rates, group) == pytest.approx(expected)


KNOWN_LOG = [  # the shape of a GRPOTrainer log_history (logging_steps=1), values chosen by hand
    {"loss": 0.1, "reward": 1.25, "reward_std": 0.5, "frac_reward_zero_std": 0.75, "completions/mean_length": 9.0,
     "entropy": 0.4, "rewards/exact_match_reward/mean": 0.25, "rewards/format_reward/mean": 1.0, "step": 1},
    {"loss": 0.0, "reward": 1.5, "reward_std": 0.4, "frac_reward_zero_std": 0.25, "completions/mean_length": 8.0,
     "entropy": 0.3, "rewards/exact_match_reward/mean": 0.5, "rewards/format_reward/mean": 1.0, "kl": 0.01, "step": 2},
    {"train_runtime": 3.0, "step": 2},
]


def test_rl_history_reads_a_known_log():
    history = rl_history(KNOWN_LOG)
    assert list(history.index) == [1, 2]
    assert history["zero-variance groups"].tolist() == [0.75, 0.25]
    assert history["exact_match_reward"].tolist() == [0.25, 0.5]
    assert history["completion length"].tolist() == [9.0, 8.0]
    assert history["KL"].isna().tolist() == [True, False]
    with pytest.raises(ValueError, match="no logged step"):
        rl_history([{"train_runtime": 1.0}])


def test_sample_rewards_groups_prompt_major(base):
    model, tokenizer = base
    rows = datasets.Dataset.from_list([{"prompt": "Say hi.\nAnswer:", "answer": "zzz-never"},
                                       {"prompt": "Count.\nAnswer:", "answer": "zzz-never"}])
    rewards = sample_rewards(model, tokenizer, rows, [exact_match_reward], num_generations=3, max_new_tokens=4)
    assert rewards == [0.0] * 6  # an answer no sample can give: every group has zero variance
    assert zero_variance_share(rewards, 3) == 1.0


@pytest.mark.slow
def test_grpo_raises_reward_on_a_learnable_task(base):
    """The shipped base model, one prompt, reward for a completion that starts with a newline (a common first token
    of the base model, so groups have variance): GRPO at a high rate raises the sampled reward."""
    model, tokenizer = copy.deepcopy(base[0]), base[1]
    torch.manual_seed(0)

    def starts_on_new_line(prompts, completions, **_):
        return [float(c.startswith("\n")) for c in completions]

    rows = datasets.Dataset.from_list([{"prompt": "The list:"}] * 64)
    before = sample_rewards(model, tokenizer, rows.select(range(4)), [starts_on_new_line], num_generations=8,
                            temperature=1.0, max_new_tokens=2)
    config = grpo_config(labkit.get_profile("cpu-tiny"), prompts_per_step=4, num_generations=8, max_completion_length=2,
                         max_steps=8, learning_rate=3e-3, temperature=1.0, warmup_steps=0, lr_scheduler_type="constant")
    trainer = train_grpo(model, tokenizer, rows, [starts_on_new_line], config)
    after = sample_rewards(model, tokenizer, rows.select(range(4)), [starts_on_new_line], num_generations=8,
                           temperature=1.0, max_new_tokens=2)
    history = rl_history(trainer.state.log_history)
    assert len(history) == 8 and not model.training
    assert sum(after) / len(after) > sum(before) / len(before) + 0.2
