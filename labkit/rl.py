"""Reinforcement learning with verifiable rewards through TRL: reward functions, GRPO and RLOO runs, their logs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.profiles import Profile

RL_LEARNING_RATE = 1e-4
""":func:`grpo_config` and :func:`rloo_config`'s default peak rate for the shipped model (TRL's default, 1e-6, is
sized for billion-parameter models and moves a 4M-parameter model by nothing in a chapter's steps). Choose on validation."""

LOGGED = {"reward": "reward", "reward std": "reward_std", "zero-variance groups": "frac_reward_zero_std",
          "KL": "kl", "completion length": "completions/mean_length", "entropy": "entropy"}
"""What :func:`rl_history` keeps of TRL's per-step GRPO/RLOO log: column name -> TRL's key (``kl`` only with ``beta > 0``)."""

RewardFunction = Callable[..., list[float]]


def first_line(completion: str) -> str:
    """The answer a completion gives, as ``labkit.eval.generate_answers`` cuts it: its first line, stripped."""
    return completion.strip().split("\n", 1)[0].strip()


def exact_match_reward(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_) -> list[float]:
    """1.0 where a completion's first line equals the row's ``answer`` after ``labkit.eval.normalize_answer``, else 0.0.

    TRL GRPO's reward signature: ``answer`` is the dataset column of ``labkit.tasks.verifiable_tasks``; the
    verifier is the scorer the chapters use for exact match, so the reward is the test metric on a sample.
    """
    from labkit.eval import normalize_answer

    if not len(completions) == len(answer):
        raise ValueError(f"exact_match_reward: {len(completions)} completions for {len(answer)} answers")
    return [float(normalize_answer(first_line(c)) == normalize_answer(a)) for c, a in zip(completions, answer)]


def format_reward(prompts: Sequence[str], completions: Sequence[str], **_) -> list[float]:
    """1.0 where a completion is one non-empty line with nothing after it (the model stopped at its answer), else 0.0.

    A completion that runs on past its answer line — a second line, or text up to the length limit — scores 0.
    Decoded text carries no EOS token, so the check is on the text; any trailing whitespace is allowed.
    """
    return [float(bool(c.strip()) and "\n" not in c.strip()) for c in completions]


def summed_reward(*functions: RewardFunction, name: str = "reward") -> RewardFunction:
    """One reward function returning the sum of ``functions`` per completion (what TRL adds up with unit
    ``reward_weights``): for a trainer taking a single reward function, such as ``labkit.ppo.train_ppo``."""
    if not functions:
        raise ValueError("summed_reward needs at least one reward function")

    def reward(prompts, completions, **columns) -> list[float]:
        parts = [f(prompts=prompts, completions=completions, **columns) for f in functions]
        return [float(sum(values)) for values in zip(*parts)]

    reward.__name__ = name
    return reward


def _rl_defaults(profile: Profile, prompts_per_step: int, num_generations: int, max_completion_length: int,
                 output_dir: str | None, overrides: dict) -> dict:
    from labkit.train import trainer_defaults

    for field, value in (("prompts_per_step", prompts_per_step), ("num_generations", num_generations),
                         ("max_completion_length", max_completion_length)):
        if value < 1:
            raise ValueError(f"{field} must be >= 1, got {value}")
    if num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 (a group's baseline needs another sample), got {num_generations}")
    defaults = trainer_defaults(profile, overrides.get("max_steps", profile.train_steps), output_dir)
    defaults.pop("max_length")  # RL configs bound the completion, not the sequence
    defaults |= dict(
        learning_rate=RL_LEARNING_RATE,
        per_device_train_batch_size=prompts_per_step * num_generations,  # completions per optimizer step
        steps_per_generation=1,  # every step samples afresh: on-policy, one update per batch
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        temperature=0.7,
        logging_steps=1,
        gradient_checkpointing=False,  # small completions; TRL's own default would be on
    )
    return defaults


def grpo_config(profile: Profile, *, prompts_per_step: int = 8, num_generations: int = 8, max_completion_length: int = 12,
                output_dir: str | None = None, **overrides):
    """A TRL ``GRPOConfig`` on ``profile``; ``overrides`` win.

    ``labkit.train.trainer_defaults`` (precision, ``use_cpu``, seeds) for the profile's steps;
    ``prompts_per_step`` prompts x ``num_generations`` samples per optimizer step, sampled afresh each step at
    temperature 0.7; completions of at most ``max_completion_length`` tokens; :data:`RL_LEARNING_RATE`; a log
    entry every step. TRL's GRPO defaults stay: ``beta=0`` (no reference model, no KL term), ``loss_type="dapo"``,
    rewards scaled by their group's standard deviation (``scale_rewards="group"``).
    """
    from trl import GRPOConfig

    defaults = _rl_defaults(profile, prompts_per_step, num_generations, max_completion_length, output_dir, overrides)
    return GRPOConfig(**(defaults | overrides))


def rloo_config(profile: Profile, *, prompts_per_step: int = 8, num_generations: int = 8, max_completion_length: int = 12,
                output_dir: str | None = None, **overrides):
    """A TRL ``RLOOConfig`` on ``profile``, with :func:`grpo_config`'s batch, sampling and logging; ``overrides`` win.

    TRL's RLOO defaults stay: ``beta=0.05`` (a KL penalty to the reference, subtracted from the reward),
    advantages = reward minus the mean of the *other* samples of the prompt (leave-one-out), not rescaled.
    """
    from trl import RLOOConfig

    defaults = _rl_defaults(profile, prompts_per_step, num_generations, max_completion_length, output_dir, overrides)
    return RLOOConfig(**(defaults | overrides))


def _train(trainer_class, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts, reward_funcs, config,
           callbacks) -> object:
    from labkit.train import remove_training_wrappers, scratch_dir

    policy.requires_grad_(True)
    # With beta > 0 TRL builds its reference by loading the policy's config path: point it at the policy as it is now
    # (the fine-tuned start), not at the base model it was first loaded from.
    original_path = policy.config._name_or_path
    if config.beta != 0.0:
        start = scratch_dir()
        policy.save_pretrained(start)
        policy.config._name_or_path = start
    try:
        trainer = trainer_class(model=policy, reward_funcs=list(reward_funcs), args=config, train_dataset=prompts,
                                processing_class=tokenizer, callbacks=list(callbacks))
        trainer.train()
    finally:
        policy.config._name_or_path = original_path
    remove_training_wrappers(trainer.model)
    trainer.model.eval()
    if trainer.ref_model is not None:
        trainer.ref_model = None  # the frozen start, no longer needed: free it
    return trainer


def train_grpo(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts, reward_funcs: Sequence[RewardFunction],
               config, *, callbacks=()):
    """Train ``policy`` in place with TRL's ``GRPOTrainer``; returns the trainer (:func:`rl_history` reads its log).

    ``prompts``: a dataset with a ``prompt`` column (``labkit.tasks.verifiable_tasks(..., fmt="completion")``); its
    other columns reach the reward functions (``answer`` for :func:`exact_match_reward`). With ``beta > 0`` the
    reference is the policy as it is when training starts. Afterwards the policy is in eval mode, without the
    trainer's wrappers (``labkit.train.remove_training_wrappers``).
    """
    from trl import GRPOTrainer

    return _train(GRPOTrainer, policy, tokenizer, prompts, reward_funcs, config, callbacks)


def train_rloo(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts, reward_funcs: Sequence[RewardFunction],
               config, *, callbacks=()):
    """:func:`train_grpo` with TRL's ``RLOOTrainer``."""
    from trl import RLOOTrainer

    return _train(RLOOTrainer, policy, tokenizer, prompts, reward_funcs, config, callbacks)


def rl_history(log_history: Sequence[dict]) -> pd.DataFrame:
    """The per-step log of a GRPO or RLOO run (``trainer.state.log_history``) as a table indexed by ``step``:
    the columns of :data:`LOGGED` that were logged, then each reward function's mean (``rewards/<name>/mean``)."""
    rows = []
    for entry in log_history:
        if "reward" not in entry:
            continue
        row = {"step": entry["step"], **{name: entry[key] for name, key in LOGGED.items() if key in entry}}
        row |= {key.split("/")[1]: value for key, value in entry.items()
                if key.startswith("rewards/") and key.endswith("/mean")}
        rows.append(row)
    if not rows:
        raise ValueError("no logged step has a 'reward': expected a GRPOTrainer/RLOOTrainer log with logging_steps set")
    return pd.DataFrame(rows).set_index("step")


def zero_variance_share(rewards: Sequence[float], group_size: int) -> float:
    """Share of groups (consecutive runs of ``group_size`` rewards, one prompt's samples) whose rewards are all equal.

    Such a group's advantages are all zero in GRPO and RLOO (reward minus the group's own mean): its prompt teaches
    nothing that step. TRL logs the same share as ``frac_reward_zero_std``.
    """
    if group_size < 1 or len(rewards) % group_size or not rewards:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    groups = [rewards[i : i + group_size] for i in range(0, len(rewards), group_size)]
    return sum(max(g) == min(g) for g in groups) / len(groups)


def expected_zero_variance_share(success_rates: Sequence[float], group_size: int) -> float:
    """The share of zero-variance groups a 0/1 reward gives when prompt i is solved with probability p_i:
    the mean over prompts of p_i^G + (1 - p_i)^G (all right or all wrong), with G = ``group_size``."""
    if group_size < 1 or not success_rates:
        raise ValueError(f"need success rates and group_size >= 1, got {len(success_rates)} rates, group_size {group_size}")
    return sum(p**group_size + (1 - p) ** group_size for p in success_rates) / len(success_rates)


@torch.no_grad()
def sample_rewards(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset, reward_funcs: Sequence[RewardFunction],
                   *, num_generations: int = 8, temperature: float = 0.7, max_new_tokens: int = 12, seed: int = 0,
                   batch_size: int = 128) -> list[float]:
    """Summed rewards of ``num_generations`` samples per prompt of ``dataset``, prompt-major (prompt i's samples are
    adjacent: groups for :func:`zero_variance_share`), sampled as GRPO samples: pure sampling at ``temperature``
    (no top-k/top-p, no repetition penalty), seeded by ``seed``; the dataset's other columns reach the rewards."""
    from labkit.generation import generate_batch

    if not temperature > 0 or num_generations < 1:
        raise ValueError(f"need temperature > 0 and num_generations >= 1, got {temperature}, {num_generations}")
    rows = dataset.to_list()
    prompts = [r["prompt"] for r in rows for _ in range(num_generations)]
    columns = {k: [r[k] for r in rows for _ in range(num_generations)] for k in dataset.column_names if k != "prompt"}
    torch.manual_seed(seed)  # seeds the generators of every device
    completions = []
    for i in range(0, len(prompts), batch_size):
        completions += generate_batch(model, tokenizer, prompts[i : i + batch_size], max_new_tokens=max_new_tokens,
                                      do_sample=True, temperature=temperature, top_k=0, top_p=1.0, repetition_penalty=1.0)
    return summed_reward(*reward_funcs)(prompts=prompts, completions=completions, **columns)
