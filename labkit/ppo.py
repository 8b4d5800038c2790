"""PPO for language models, written out: rollouts, KL-penalised rewards, GAE, clipped losses, minibatch epochs."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

KL_ESTIMATORS = ("k1", "k3")


@dataclass
class PPOConfig:
    """One PPO run. Defaults follow "The N implementation details of RLHF with PPO" (Huang et al. 2024)."""

    steps: int
    """PPO iterations; each samples one rollout batch and then updates on it."""
    prompts_per_step: int
    """Rollout batch: prompts per iteration, one sampled completion each."""
    learning_rate: float
    """AdamW rate, shared by the policy and the value model."""
    max_new_tokens: int
    """Longest sampled completion (tokens)."""
    kl_coef: float = 0.05
    """Per-token reward ``-kl_coef * KL(policy || reference)``; 0 removes the penalty."""
    kl_estimator: str = "k1"
    """``k1``: log p - log p_ref; ``k3``: (r - 1) - log r with r = p_ref / p (Schulman 2020). Both unbiased."""
    temperature: float = 0.7
    """Sampling temperature, applied again to the logits when scoring log-probs."""
    clip_range: float = 0.2
    """The policy ratio is clipped to [1 - clip_range, 1 + clip_range]."""
    value_clip_range: float = 0.2
    """New value predictions are clipped to within this of the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    gamma: float = 1.0
    """Discount per token."""
    lam: float = 0.95
    """GAE's lambda: 0 is one-step TD, 1 is Monte Carlo returns."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    minibatch_size: int = 4
    """Completions per gradient step (the rollout batch is shuffled into minibatches each epoch)."""
    whiten_advantages: bool = True
    """Shift and scale advantages to mean 0, variance 1 over the batch's real tokens."""
    missing_eos_penalty: float | None = 1.0
    """Subtracted from the score of a completion that ends without an end-of-sequence token; None: no penalty."""
    seed: int = 0
    """Seeds prompt order, sampling and minibatch shuffling."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clip per minibatch step; None: no clipping."""

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "max_new_tokens", "ppo_epochs", "minibatch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "temperature", "clip_range", "value_clip_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.kl_coef < 0 or self.vf_coef < 0:
            raise ValueError(f"PPOConfig.kl_coef and vf_coef must be >= 0, got {self.kl_coef} and {self.vf_coef}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"PPOConfig.kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"PPOConfig.gamma and lam must be in [0, 1], got {self.gamma} and {self.lam}")
        if self.minibatch_size > self.prompts_per_step:
            raise ValueError(f"PPOConfig.minibatch_size ({self.minibatch_size}) exceeds prompts_per_step ({self.prompts_per_step})")


# ---- pure tensor functions: every (B, T) tensor below is per response token; mask is 1 on real tokens ----

def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True) -> torch.Tensor:
    """``values`` scaled to unit variance (and, with ``shift_mean``, mean 0) over the masked positions; 0 elsewhere."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)  # unbiased
    out = (values - mean) * torch.rsqrt(variance + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probs of tokens sampled from the policy.

    ``k1 = log p - log q`` (can be negative per token); ``k3 = (r - 1) - log r`` with ``r = q / p`` (never
    negative, lower variance when p and q are close). Both have expectation KL(p || q) under p.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): ``(advantages, returns)``, each (B, T).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, with V and A
    zero past each row's last real token; ``returns = A + V`` is the value model's target.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017), as a loss: ``(loss, clip_fraction)``.

    ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))`` over real tokens, with
    ``ratio = exp(logprobs - old_logprobs)``; ``clip_fraction`` is the share of tokens where the clipped term won.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: ``(0.5 * mean(max((V - R)^2, (V_clip - R)^2)), clip_fraction)``, V_clip within
    ``clip_range`` of the rollout's values ``old_values``."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


# ---- models ----

class ValueModel(nn.Module):
    """A copy of a model's transformer with a scalar head: one value per position, shape (B, T).

    From a causal LM (the policy) the head starts at zero, so V = 0 before the first update; from a reward
    model (a one-output sequence classifier, ``labkit.reward.reward_model_from``) it starts as the reward
    model's own head, as TRL's PPO and InstructGPT initialise the value model.
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.backbone = copy.deepcopy(model.base_model).requires_grad_(True)  # trained even if the source is frozen
        self.head = nn.Linear(model.config.hidden_size, 1).to(model.device, model.dtype)
        nn.init.zeros_(self.head.bias)
        score = getattr(model, "score", None)
        with torch.no_grad():
            if isinstance(score, nn.Linear) and score.out_features == 1:
                self.head.weight.copy_(score.weight)
            else:
                nn.init.zeros_(self.head.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state  # (B, T, H)
        return self.head(hidden).squeeze(-1).float()  # (B, T)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding: the first real token is position 0


def response_logprobs(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the response tokens (those after ``prompt_length``) at ``temperature``, and the entropy of
    each of those next-token distributions: two (B, R) fp32 tensors."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                   use_cache=False).logits[:, prompt_length - 1 : -1].float() / temperature  # (B, R, V)
    logp = torch.log_softmax(logits, dim=-1)
    taken = logp.gather(-1, input_ids[:, prompt_length:, None]).squeeze(-1)
    return taken, -(logp.exp() * logp).sum(-1)


def _stop_ids(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = getattr(policy.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    return [ids] if isinstance(ids, int) else list(ids)


@torch.no_grad()
def rollout(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], config: PPOConfig):
    """Sample one completion per prompt at ``config.temperature`` (no top-k/top-p/repetition penalty, so the
    sampled distribution is the one scored). Returns ``(input_ids, attention_mask, response_mask, ended)``:
    (B, P + R) left-padded prompt + response, its mask, the (B, R) real-token mask (up to and including the
    first end-of-sequence token) and which rows ended with one."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(policy.device)
    finally:
        tokenizer.padding_side = side
    stops = _stop_ids(policy, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    out = policy.generate(**batch, do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0,
                          repetition_penalty=1.0, max_new_tokens=config.max_new_tokens, min_new_tokens=1,
                          eos_token_id=stops, pad_token_id=pad)
    prompt_length = batch["input_ids"].shape[1]
    response = out[:, prompt_length:]  # (B, R)
    is_stop = torch.isin(response, torch.tensor(stops, device=response.device))
    ended = is_stop.any(1)
    first_stop = torch.where(ended, is_stop.int().argmax(1), torch.full_like(ended, response.shape[1], dtype=torch.long))
    response_mask = (torch.arange(response.shape[1], device=response.device)[None] <= first_stop[:, None]).float()
    response = torch.where(response_mask.bool(), response, torch.full_like(response, pad))
    input_ids = torch.cat([batch["input_ids"], response], 1)
    attention_mask = torch.cat([batch["attention_mask"], response_mask.long()], 1)
    return input_ids, attention_mask, response_mask, ended


def _prompt_rows(prompts) -> list[dict]:
    """Prompts as rows with a ``prompt`` key: from strings, dicts, or a ``datasets.Dataset``."""
    rows = [p if isinstance(p, dict) else {"prompt": p} for p in (prompts.to_list() if hasattr(prompts, "to_list") else prompts)]
    if not rows:
        raise ValueError("no prompts given")
    bad = [i for i, r in enumerate(rows) if not isinstance(r.get("prompt"), str)]
    if bad:
        raise ValueError(f"prompt row {bad[0]} has no string 'prompt'; expected strings or rows with a 'prompt' column")
    return rows


def train_ppo(policy: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts,
              reward_fn: Callable[..., list[float]], config: PPOConfig, *, value_model: nn.Module | None = None,
              callback: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Train ``policy`` in place with PPO against ``reward_fn``; one row of measurements per step.

    ``prompts``: strings, or rows (a ``datasets.Dataset`` or dicts) with a ``prompt`` column whose other columns
    are passed to ``reward_fn`` like TRL's GRPO does: ``reward_fn(prompts=[...], completions=[...], **columns)``
    returns one float per completion (completions are decoded without the prompt or special tokens).
    ``reference`` is frozen; ``value_model`` defaults to a :class:`ValueModel` copied from the policy.
    ``callback(row)``, if given, is called after each step with that step's row (e.g. to evaluate the policy).
    Columns: ``step``, ``reward`` (mean of reward_fn), ``score`` (after the missing-EOS penalty), ``kl`` (mean
    per-completion sum of the KL estimate), ``approx_kl``, ``clip_fraction``, ``value_clip_fraction``,
    ``entropy``, ``policy_loss``, ``value_loss``, ``response_length``, ``no_eos``, ``seconds``.
    """
    rows, c = _prompt_rows(prompts), config
    value_model = ValueModel(policy) if value_model is None else value_model
    reference.requires_grad_(False).eval()
    policy.eval(), value_model.eval()  # no dropout: the rollout's log-probs must be the ones the update starts from
    params = [p for p in list(policy.parameters()) + list(value_model.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=c.learning_rate, eps=1e-5)
    order_rng = random.Random(c.seed)
    order: list[int] = []
    devices = [policy.device.index or 0] if policy.device.type == "cuda" else []
    history = []
    with torch.random.fork_rng(devices=devices):  # the caller's RNG state is left as it was
        torch.manual_seed(c.seed)
        shuffle = torch.Generator().manual_seed(c.seed)  # minibatch order drawn on the CPU: the same on any device
        for step in range(1, c.steps + 1):
            start = time.perf_counter()
            while len(order) < c.prompts_per_step:  # cycle through the prompts, reshuffled on each pass
                order += order_rng.sample(range(len(rows)), len(rows))
            batch_rows, order = [rows[i] for i in order[: c.prompts_per_step]], order[c.prompts_per_step :]
            texts = [r["prompt"] for r in batch_rows]

            # 1. rollout, and everything the update compares against: old log-probs, reference log-probs, values
            input_ids, attention_mask, mask, ended = rollout(policy, tokenizer, texts, c)
            prompt_length = input_ids.shape[1] - mask.shape[1]
            with torch.no_grad():
                old_logprobs, _ = response_logprobs(policy, input_ids, attention_mask, prompt_length, c.temperature)
                ref_logprobs, _ = response_logprobs(reference, input_ids, attention_mask, prompt_length, c.temperature)
                old_values = value_model(input_ids, attention_mask, _positions(attention_mask))[:, prompt_length - 1 : -1] * mask
            completions = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            columns = {k: [r[k] for r in batch_rows] for k in batch_rows[0] if k != "prompt"}
            raw = torch.tensor([float(s) for s in reward_fn(prompts=texts, completions=completions, **columns)],
                               device=mask.device)
            if raw.shape != (len(texts),):
                raise ValueError(f"reward_fn returned {raw.numel()} scores for {len(texts)} completions")
            score = raw - (c.missing_eos_penalty or 0.0) * (~ended).float()

            # 2. per-token rewards: -kl_coef * KL everywhere, plus the score at each row's last real token
            kl = kl_estimate(old_logprobs, ref_logprobs, c.kl_estimator) * mask
            rewards = -c.kl_coef * kl
            last = (mask.sum(1).long() - 1).clamp(min=0)
            rewards[torch.arange(len(texts), device=mask.device), last] += score
            advantages, returns = gae(rewards, old_values, mask, gamma=c.gamma, lam=c.lam)
            if c.whiten_advantages:
                advantages = whiten(advantages, mask)

            # 3. several epochs over shuffled minibatches of the rollout
            stats = []
            for _ in range(c.ppo_epochs):
                for idx in torch.randperm(len(texts), generator=shuffle).split(c.minibatch_size):
                    idx = idx.to(mask.device)
                    ids, att, m = input_ids[idx], attention_mask[idx], mask[idx]
                    logprobs, entropy = response_logprobs(policy, ids, att, prompt_length, c.temperature)
                    values = value_model(ids, att, _positions(att))[:, prompt_length - 1 : -1]
                    pg_loss, clip_fraction = policy_loss(logprobs, old_logprobs[idx], advantages[idx], m, c.clip_range)
                    vf_loss, vf_clip = value_loss(values, old_values[idx], returns[idx], m, c.value_clip_range)
                    optimizer.zero_grad(set_to_none=True)
                    (pg_loss + c.vf_coef * vf_loss).backward()
                    if c.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
                    optimizer.step()
                    with torch.no_grad():
                        approx_kl = 0.5 * masked_mean((logprobs - old_logprobs[idx]) ** 2, m)
                        stats.append([pg_loss.item(), vf_loss.item(), clip_fraction.item(), vf_clip.item(),
                                      approx_kl.item(), masked_mean(entropy, m).item()])
            means = [sum(column) / len(column) for column in zip(*stats)]  # per statistic, over the minibatches
            history.append({"step": step, "reward": raw.mean().item(), "score": score.mean().item(),
                            "kl": kl.sum(1).mean().item(), "approx_kl": means[4], "clip_fraction": means[2],
                            "value_clip_fraction": means[3], "entropy": means[5], "policy_loss": means[0],
                            "value_loss": means[1], "response_length": mask.sum(1).mean().item(),
                            "no_eos": (~ended).float().mean().item(), "seconds": time.perf_counter() - start})
            if callback is not None:
                callback(history[-1])
                policy.eval()
    policy.eval()
    return pd.DataFrame(history)
