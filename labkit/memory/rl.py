"""One RL step (GRPO, RLOO, PPO): the models it holds, its phases (sample, score, train), estimated and measured.

An RL step samples ``num_generations`` completions for each of ``batch_size`` prompts with the policy (a
KV cache grows as it samples), scores them under ``no_grad`` (the frozen reference's log-probs when
``beta > 0``, a reward model's scores, PPO's old log-probs and values), then runs the policy's forward and
backward on the ``batch_size * num_generations`` rows -- the SFT activation terms, with the loss on the
completion's tokens only (TRL's ``logits_to_keep``). The phases follow one another, so the step's peak is
the kept state (weights, optimizer, reference, value and reward models) plus the largest phase.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from labkit.memory.architectures import Architecture
from labkit.memory.setup import TrainingSetup, make_setup

LOSS_TENSORS_PER_TOKEN = {"grpo": 3, "rloo": 3, "ppo": 6}
"""fp32 per-token tensors the policy's loss keeps besides the log-softmax (ratio, advantages, mask...):
counted from :func:`policy_loss`'s graph; PPO adds its clipped value loss."""
KL_TENSORS_PER_TOKEN = 2
"""GRPO's per-token KL to the reference (``exp(ref - logp) - (ref - logp) - 1``) keeps two more."""


def kv_cache_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """Bytes of the KV cache when sampling ends: ``layers x 2 x kv_heads x head_dim x tokens x rows x e``.

    ``tokens`` is ``seq_len - 1``: the prompt and every sampled token but the last, which is never fed back.
    Sliding-window layers are counted as full (an upper bound for Gemma-2/3).
    """
    if setup.objective != "rl":
        return 0
    return (arch.num_layers * 2 * arch.num_kv_heads * arch.head_dim * (setup.seq_len - 1) * setup.sequences
            * setup.compute_bytes)


def rl_loss_bytes(arch: Architecture, setup: TrainingSetup) -> dict[str, int]:
    """What the policy's loss keeps for backward, on the ``rows x completion_len`` scored tokens: the fp32
    log-softmax over the vocabulary, the gathered token ids, and the per-token tensors of the objective."""
    scored = setup.sequences * setup.completion_len
    per_token = LOSS_TENSORS_PER_TOKEN[setup.algorithm]
    if setup.algorithm == "grpo" and setup.reference == "model":
        per_token += KL_TENSORS_PER_TOKEN
    loss = {"log_softmax_fp32": scored * arch.vocab_size * 4} if setup.logits == "full" else {"logsumexp_fp32": scored * 4}
    loss |= {"targets_int64": scored * 8, "per_token_fp32": scored * 4 * per_token}
    return loss


def rl_phases(arch: Architecture, setup: TrainingSetup, training_bytes: int) -> dict[str, int]:
    """Bytes each phase holds on top of the kept state: ``generation`` (the KV cache and one step's fp32
    sampling logits), ``scoring`` (the largest ``no_grad`` forward: the reference's or PPO's old log-probs on
    the completion, its logits, their fp32 copy and log-softmax), ``training`` (``training_bytes``: activations,
    loss and backward transient). ``kv_cache`` is reported too (part of ``generation``)."""
    rows, c, v, e = setup.sequences, setup.completion_len, arch.vocab_size, setup.compute_bytes
    kv = kv_cache_bytes(arch, setup)
    logps_forward = rows * (c + 1) * v * e + 2 * rows * c * v * 4
    scores = setup.reference == "model" or setup.algorithm == "ppo"
    reward_forward = rows * setup.seq_len * (arch.hidden_size + arch.intermediate_size) * e if setup.reward == "model" else 0
    return {"kv_cache": kv, "generation": kv + rows * v * (e + 8),
            "scoring": max(logps_forward if scores else 0, reward_forward), "training": training_bytes}


# ---- measured: the step as measure_memory runs it ----

def completion_logprobs(logits: torch.Tensor, ids: torch.Tensor, completion_len: int) -> torch.Tensor:
    """Per-token log-probs of the last ``completion_len`` tokens of ``ids`` from ``logits`` computed for the last
    ``completion_len + 1`` positions (TRL's ``logits_to_keep``): ``(rows, completion_len)``, fp32."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (rows, c, V)
    return logp.gather(-1, ids[:, -completion_len:, None]).squeeze(-1)


def policy_loss(setup: TrainingSetup, logps: torch.Tensor, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
                mask: torch.Tensor, beta: float = 0.04) -> torch.Tensor:
    """The policy's loss: PPO's clipped surrogate (``labkit.ppo.policy_loss``); GRPO/RLOO's ``-ratio * A`` with the
    ratio to the sampling policy (``exp(logp - logp.detach())``, one update per batch), plus GRPO's per-token
    KL to the reference (k3) when there is one (RLOO puts its KL in the reward, outside the graph)."""
    from labkit.ppo import masked_mean
    from labkit.ppo import policy_loss as ppo_policy_loss

    if setup.algorithm == "ppo":
        return ppo_policy_loss(logps, logps.detach(), advantages, mask)[0]
    per_token = -torch.exp(logps - logps.detach()) * advantages
    if setup.algorithm == "grpo" and ref_logps is not None:
        diff = ref_logps - logps
        per_token = per_token + beta * (torch.exp(diff) - diff - 1)
    return masked_mean(per_token, mask)


class RLStep:
    """The models an RL step holds beside the policy (reference, value model, reward model) and one step's
    work, recorded with ``measure_memory``'s recorder."""

    def __init__(self, arch: Architecture, setup: TrainingSetup, build: Callable[[TrainingSetup], torch.nn.Module],
                 seed: int = 0):
        from transformers import AutoModelForSequenceClassification

        from labkit.memory.build import DTYPES, make_optimizer, hf_config
        from labkit.ppo import ValueModel

        self.arch, self.setup = arch, setup
        plain = make_setup("full", precision=setup.precision, attn_implementation=setup.attn_implementation)
        self.reference = build(plain).eval().requires_grad_(False) if setup.reference == "model" and not setup.adapters else None
        self.reward_model = None
        if setup.reward == "model":
            config = hf_config(arch, plain)
            config.num_labels = 1
            torch.manual_seed(seed)
            self.reward_model = AutoModelForSequenceClassification.from_config(
                config, dtype=DTYPES[setup.precision]).eval().requires_grad_(False)
        self.value_model, self.value_masters, self.value_optimizer = None, None, None
        if setup.algorithm == "ppo":
            self.value_model = ValueModel(build(plain)).train()
            params = list(self.value_model.parameters())
            self.value_masters = [p.detach().float() for p in params] if setup.precision.endswith("-mixed") else None
            self.value_optimizer = make_optimizer(setup, self.value_masters or params)

    def held_bytes(self) -> dict[str, int]:
        """Bytes of the reference and reward model weights (the value model's come with :meth:`update`)."""
        def size(module):
            return sum(p.untyped_storage().nbytes() for p in module.parameters()) if module is not None else 0
        return {"reference": size(self.reference), "reward_model": size(self.reward_model)}

    def run(self, policy: torch.nn.Module, prompts: torch.Tensor, record: Callable, forward_records: list,
            loss_records: list) -> tuple[torch.Tensor, int]:
        """Sample, score and compute the loss for ``prompts`` ``(batch_size, prompt_len)``; returns ``(loss,
        KV cache bytes)``. What the forwards keep goes to ``forward_records``, what the losses keep to ``loss_records``."""
        s, c = self.setup, self.setup.completion_len
        rows = prompts.repeat_interleave(s.num_generations, dim=0)
        policy.eval()
        out = policy.generate(input_ids=rows, attention_mask=torch.ones_like(rows), max_new_tokens=c, min_new_tokens=c,
                              do_sample=False, use_cache=True, return_dict_in_generate=True, pad_token_id=0)
        cache = out.past_key_values
        kv = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in (layer.keys, layer.values))
        ids = out.sequences  # (rows, seq_len)
        del out, cache
        policy.train()
        mask = torch.ones(ids.shape[0], c, device=ids.device)
        with torch.no_grad():
            ref_logps = None
            if s.reference == "model":
                if self.reference is not None:
                    ref_logps = completion_logprobs(self.reference(input_ids=ids, logits_to_keep=c + 1).logits, ids, c)
                else:  # the policy with its adapter disabled, as TRL does with a peft policy
                    with policy.disable_adapter():
                        ref_logps = completion_logprobs(policy(input_ids=ids, logits_to_keep=c + 1).logits, ids, c)
            if self.reward_model is not None:
                self.reward_model(input_ids=ids)
            advantages = torch.randn(ids.shape[0], 1 if s.algorithm != "ppo" else c, device=ids.device)
            if self.value_model is not None:
                old_values = self.value_model(ids, torch.ones_like(ids), None)[:, -c - 1:-1]
        with record(forward_records):
            logits = policy(input_ids=ids, logits_to_keep=c + 1).logits
        with record(loss_records):
            logps = completion_logprobs(logits, ids, c)
            del logits
            loss = policy_loss(s, logps, ref_logps, advantages, mask)
        if self.value_model is not None:
            from labkit.ppo import value_loss

            with record(forward_records):
                values = self.value_model(ids, torch.ones_like(ids), None)
            with record(loss_records):
                loss = loss + 0.1 * value_loss(values[:, -c - 1:-1], old_values, old_values + advantages, mask)[0]
        return loss, kv

    def update(self) -> int:
        """After backward: the value model's optimizer step; returns its bytes (weights, masters, gradients, moments)."""
        if self.value_model is None:
            return 0
        params = list(self.value_model.parameters())
        if self.value_masters is not None:
            for master, p in zip(self.value_masters, params):
                master.grad, p.grad = p.grad.float(), None
        owners = self.value_masters or params
        grads = sum(p.grad.untyped_storage().nbytes() for p in owners if p.grad is not None)
        self.value_optimizer.step()
        states = sum(v.untyped_storage().nbytes() for st in self.value_optimizer.state.values() for v in st.values()
                     if torch.is_tensor(v))
        if self.value_masters is not None:
            with torch.no_grad():
                for master, p in zip(self.value_masters, params):
                    p.copy_(master)
        self.value_optimizer.zero_grad(set_to_none=True)
        weights = sum(p.untyped_storage().nbytes() for p in params + (self.value_masters or []))
        return weights + grads + states
