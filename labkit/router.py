"""A learned per-sequence router over frozen LoRA experts: a mixture of adapters, weighted per prompt.

The router reads the *base* model's last hidden states over the prompt (adapters off), mean-pools them
and maps them to softmax weights over the experts. Every expert adapter is then active at once, each
LoRA update ``B_k A_k x`` scaled by its sequence's weight ``g_k``: for one sequence the model computes
``W x + Σ_k g_k ΔW_k x``. Only the router trains (by the language-model loss on the answers); the
experts and the base stay frozen.

Per sequence, not per token (X-LoRA, Buehler & Buehler 2024, routes per token): the task is a property
of the whole prompt, and weights fixed by the prompt hold through generation with a KV cache, so
routing costs one extra forward pass over the prompt instead of a second pass at every token.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class RouterConfig:
    """How the router is trained."""

    learning_rate: float = 1e-2
    """AdamW's rate for the router's weights (the only ones that train)."""
    steps: int = 20
    """Optimizer steps."""
    batch_size: int = 16
    """Sequences per step, drawn from the mixed training rows."""
    seed: int = 0

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")


class SequenceRouter(nn.Module):
    """Softmax weights over ``n_experts`` from mean-pooled, standardized hidden states: one weight vector per sequence."""

    def __init__(self, hidden_size: int, n_experts: int):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        self.proj = nn.Linear(hidden_size, n_experts)
        nn.init.zeros_(self.proj.weight)  # starts uniform: every expert at 1 / n_experts
        nn.init.zeros_(self.proj.bias)
        self.register_buffer("feature_mean", torch.zeros(hidden_size))
        self.register_buffer("feature_std", torch.ones(hidden_size))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``hidden`` (B, T, H), ``mask`` (B, T) of the prompt tokens -> weights (B, K), each row summing to 1."""
        standardized = (self.pool(hidden, mask) - self.feature_mean) / self.feature_std  # (B, H)
        return torch.softmax(self.proj(standardized.to(self.proj.weight.dtype)), dim=-1)

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean of ``hidden`` (B, T, H) over the positions where ``mask`` (B, T) is 1: (B, H)."""
        mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    @torch.no_grad()
    def fit_standardization(self, pooled: torch.Tensor) -> None:
        """Set the per-feature mean and standard deviation from pooled features (N, H) of training prompts.

        Every prompt's pooled state shares a large common part; removing it leaves what tells prompts apart.
        """
        self.feature_mean.copy_(pooled.mean(0))
        self.feature_std.copy_(pooled.std(0).clamp(min=1e-6))


@torch.no_grad()
def prompt_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The base model's last hidden states (B, T, H) with every adapter of the peft ``model`` off."""
    with model.disable_adapter():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[-1].float()


@contextlib.contextmanager
def routed(model, experts: Sequence[str], weights: torch.Tensor) -> Iterator[None]:
    """Within the block every adapter of ``experts`` is active, expert ``k``'s update scaled by ``weights[:, k]``.

    ``weights`` (B, K): one row per sequence of the batch the block runs (generation included: the
    same rows at every step). Restores the previously active adapter and freezes the experts on exit.
    """
    if weights.dim() != 2 or weights.shape[1] != len(experts):
        raise ValueError(f"weights must be (batch, {len(experts)}) for experts {list(experts)}, got {tuple(weights.shape)}")
    from labkit.merging import lora_layers

    previous = model.active_adapter
    handles = []

    def scale(k):
        def hook(module, inputs, output):  # output (B, T, out): the expert's B_k A_k x
            return output * weights[:, k].to(output.dtype).view(-1, *([1] * (output.dim() - 1)))
        return hook

    try:
        model.base_model.set_adapter(list(experts), inference_mode=True)
        for layer in lora_layers(model).values():
            for k, name in enumerate(experts):
                if name in layer.lora_B:
                    handles.append(layer.lora_B[name].register_forward_hook(scale(k)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        model.base_model.set_adapter(previous, inference_mode=True)


def _encode(tokenizer, prompts: Sequence[str], completions: Sequence[str] | None, device) -> dict:
    """Right-padded ids, attention mask, prompt mask (B, T) and labels (-100 outside the completions)."""
    rows = []
    for i, prompt in enumerate(prompts):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completions[i], add_special_tokens=False)["input_ids"] if completions is not None else []
        rows.append((p, c))
    width = max(len(p) + len(c) for p, c in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention, prompt_mask = torch.zeros_like(ids), torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attention[i, : len(p) + len(c)] = 1
        prompt_mask[i, : len(p)] = 1
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c, dtype=torch.long)
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=attention, prompt_mask=prompt_mask,
                                             labels=labels).items()}


def sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over each sequence's labelled tokens, then over sequences.

    Every prompt counts once: with a plain token average, tasks with longer answers would outweigh the others
    in what the router learns. ``logits`` (B, T, V), ``labels`` (B, T) with -100 where unlabelled.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t + 1
    per_token = nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # (B, T-1)
    counted = (labels != -100).sum(1).clamp(min=1)
    return (per_token.sum(1) / counted).mean()


def train_router(model, tokenizer, experts: Sequence[str], rows, config: RouterConfig, *,
                 autocast_dtype: torch.dtype | None = None) -> tuple[SequenceRouter, list[float]]:
    """Train a :class:`SequenceRouter` over the frozen ``experts`` of the peft ``model`` on prompt-completion ``rows``.

    The router's standardization is fitted on the first ``4 * batch_size`` shuffled training prompts; then
    AdamW minimises :func:`sequence_loss`. Returns the router and the loss of every step. ``autocast_dtype``:
    16-bit autocast for the forward passes (the profile's compute dtype), ``None`` for none.
    """
    device = next(model.parameters()).device
    model.eval()
    model.requires_grad_(False)
    router = SequenceRouter(model.config.hidden_size, len(experts)).to(device)
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    autocast = dict(device_type=device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None)
    sample = [rows[i]["prompt"] for i in order[: 4 * config.batch_size]]
    with torch.autocast(**autocast):
        router.fit_standardization(torch.cat([_pooled(model, tokenizer, sample[i : i + 32], device)
                                              for i in range(0, len(sample), 32)]))
    optimizer = torch.optim.AdamW(router.proj.parameters(), lr=config.learning_rate, weight_decay=0.0)
    losses = []
    for step in range(config.steps):
        picked = [order[(step * config.batch_size + i) % len(order)] for i in range(config.batch_size)]
        batch = _encode(tokenizer, [rows[i]["prompt"] for i in picked], [rows[i]["completion"] for i in picked], device)
        with torch.autocast(**autocast):
            features = prompt_features(model, batch["input_ids"], batch["attention_mask"])
            weights = router(features, batch["prompt_mask"])  # (B, K)
            with routed(model, experts, weights):
                loss = sequence_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                     batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return router.eval(), losses


def _pooled(model, tokenizer, prompts, device) -> torch.Tensor:
    batch = _encode(tokenizer, prompts, None, device)
    return SequenceRouter.pool(prompt_features(model, batch["input_ids"], batch["attention_mask"]), batch["prompt_mask"])


@torch.no_grad()
def routing_weights(model, tokenizer, router: SequenceRouter, prompts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
    """The router's weights (N, K) for each prompt, computed from the prompt alone."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = _encode(tokenizer, prompts[i : i + batch_size], None, device)
        out.append(router(prompt_features(model, batch["input_ids"], batch["attention_mask"]), batch["prompt_mask"]).cpu())
    return torch.cat(out)


@torch.no_grad()
def generate_routed(model, tokenizer, router: SequenceRouter, experts: Sequence[str], prompts: Sequence[str], *,
                    max_new_tokens: int, batch_size: int = 32) -> tuple[list[str], torch.Tensor]:
    """Greedy answers (cut at the first newline) with each prompt's experts weighted by ``router``; and the weights (N, K)."""
    from labkit.generation import generate_batch

    weights = routing_weights(model, tokenizer, router, prompts, batch_size=batch_size)
    device = next(model.parameters()).device
    answers = []
    for i in range(0, len(prompts), batch_size):
        with routed(model, experts, weights[i : i + batch_size].to(device)):
            rows = generate_batch(model, tokenizer, list(prompts[i : i + batch_size]), max_new_tokens=max_new_tokens,
                                  do_sample=False, repetition_penalty=1.0, temperature=None, top_k=None, top_p=None)
        answers.extend(row.strip().split("\n", 1)[0].strip() for row in rows)
    return answers, weights
