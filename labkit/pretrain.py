"""Pretraining in miniature: a Llama-architecture model trained on a token stream with AdamW + cosine."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from labkit.hardware import native_bf16


@dataclass
class PretrainConfig:
    """Architecture and optimisation of a from-scratch pretraining run."""

    hidden_size: int = 256
    """Width of the residual stream."""
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    """Key/value heads; fewer than ``num_heads`` gives grouped-query attention."""
    intermediate_size: int = 768
    """Width of the SwiGLU feed-forward block."""
    max_position_embeddings: int = 2048
    """RoPE positions the config admits; training only sees ``seq_len`` of them."""
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to ``lr * min_lr_ratio``."""
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bf16_autocast: bool | None = None
    """Compute matmuls in bf16 (about 1.5x faster on a CPU with AVX512-BF16, far more on a GPU); weights stay
    fp32. ``None``: where the device has native bf16 (``labkit.hardware.native_bf16``); a CPU without it
    emulates bf16 many times slower than fp32."""
    seed: int = 0
    eval_every: int = 100

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError(f"seq_len {self.seq_len} exceeds max_position_embeddings {self.max_position_embeddings}")
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")


def build_model(cfg: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised Llama whose vocabulary and special ids match ``tokenizer``."""
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=10000.0,
        tie_word_embeddings=True,  # saves vocab x hidden parameters: a quarter of this model
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def token_stream(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """All texts as one 1-D id tensor, each followed by the end-of-sequence token."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def stream_loss(model: torch.nn.Module, ids: torch.Tensor, seq_len: int, batch_size: int = 16) -> float:
    """Mean next-token loss over non-overlapping ``seq_len`` windows of a 1-D stream (fast, for curves)."""
    n = (len(ids) - 1) // seq_len
    device = next(model.parameters()).device
    windows = ids[: n * seq_len + 1].to(device)
    x = windows[:-1].view(n, seq_len)
    y = windows[1:].view(n, seq_len)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for i in range(0, n, batch_size):
        logits = model(input_ids=x[i : i + batch_size]).logits.float()  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i : i + batch_size].flatten(), reduction="sum")
        total += loss.item()
        count += y[i : i + batch_size].numel()
    model.train(was_training)
    return total / count


@dataclass
class PretrainLog:
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


def pretrain(
    model: torch.nn.Module,
    train_ids: torch.Tensor,
    cfg: PretrainConfig,
    eval_ids: torch.Tensor | None = None,
    callback: Callable[[PretrainLog], None] | None = None,
    progress: bool = True,
) -> PretrainLog:
    """Train on random ``seq_len`` windows of ``train_ids``; returns the loss curves.

    ``callback`` is called after every evaluation (a notebook redraws its live plot there).
    """
    from tqdm.auto import tqdm

    if len(train_ids) <= cfg.seq_len + 1:
        raise ValueError(f"train_ids has {len(train_ids)} tokens; need more than seq_len + 1 = {cfg.seq_len + 1}")
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    log = PretrainLog()
    device = next(model.parameters()).device
    use_bf16 = native_bf16(device) if cfg.bf16_autocast is None else cfg.bf16_autocast
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    offsets = torch.arange(cfg.seq_len + 1)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress, mininterval=2.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        starts = torch.randint(0, len(train_ids) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        batch = train_ids[starts[:, None] + offsets].to(device)  # (B, T + 1)
        with autocast:
            logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        log.steps.append(step)
        log.train_loss.append(loss.item())
        log.tokens += cfg.batch_size * cfg.seq_len
        last = step == cfg.steps - 1
        if eval_ids is not None and (step % cfg.eval_every == 0 or last) and step > 0:
            log.eval_steps.append(step)
            log.eval_loss.append(stream_loss(model, eval_ids, cfg.seq_len))
            bar.set_postfix(train=f"{loss.item():.3f}", heldout=f"{log.eval_loss[-1]:.3f}")
            log.seconds = time.perf_counter() - start
            if callback is not None:
                callback(log)
    log.seconds = time.perf_counter() - start
    model.eval()
    return log
