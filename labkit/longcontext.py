"""Longer context: LongLoRA's shifted sparse attention (S²-Attn) and linear position interpolation."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WRAPS = ("causal", "roll")
"""How S² treats the group that the shift wraps around (the last half-group joined to the first):
``causal`` keeps the original causal order there (the first tokens see only earlier tokens, as always);
``roll`` applies plain causal attention in the rolled order, as LongLoRA's official code does, so the
first half-group of tokens also sees the last half-group — tokens that come *after* them."""


@dataclass(frozen=True)
class S2Config:
    """Shifted sparse attention (Chen et al. 2023, "LongLoRA"), used while the model trains."""

    group_fraction: float = 0.25
    """Group size as a fraction of the sequence length: G = n * group_fraction (the paper's 1/4)."""
    shift: bool = True
    """Shift the second half of the heads by G/2 before grouping, so information flows between groups."""
    wrap: str = "causal"
    """What the shifted heads do in the wrapped group; one of :data:`WRAPS`."""
    full_attention_in_eval: bool = True
    """In ``model.eval()`` attend over the whole sequence (LongLoRA's inference); S² only in training."""

    def __post_init__(self):
        if not 0 < self.group_fraction <= 1:
            raise ValueError(f"S2Config.group_fraction must be in (0, 1], got {self.group_fraction}")
        if self.wrap not in WRAPS:
            raise ValueError(f"S2Config.wrap must be one of {WRAPS}, got {self.wrap!r}")

    def group_size(self, n: int) -> int:
        """Tokens per group for a sequence of ``n`` tokens; raises when ``n`` does not split evenly."""
        size = round(n * self.group_fraction)
        if size < 2 or n % size or (self.shift and size % 2):
            raise ValueError(f"S2-Attn: a sequence of {n} tokens does not split into groups of {n} * "
                             f"{self.group_fraction} tokens (an even whole number that divides {n}); pad the "
                             f"batch to a multiple of {round(1 / self.group_fraction) * 2} tokens")
        return size


def group_positions(n: int, group: int, shifted: bool, device=None) -> torch.Tensor:
    """Original token positions in each group, ``(n // group, group)``; shifted groups start at G/2."""
    positions = torch.arange(n, device=device)
    if shifted:
        positions = positions.roll(-(group // 2))
    return positions.view(n // group, group)


def group_masks(n: int, group: int, shifted: bool, wrap: str = "causal", device=None) -> torch.Tensor:
    """Which key each query may see inside its group, ``(n // group, group, group)``, True = attend."""
    if wrap not in WRAPS:
        raise ValueError(f"wrap must be one of {WRAPS}, got {wrap!r}")
    if wrap == "roll" or not shifted:  # causal in the order the tokens sit in the group
        order = torch.arange(group, device=device)
        return (order[:, None] >= order[None, :]).expand(n // group, group, group)
    positions = group_positions(n, group, shifted, device)
    return positions[:, :, None] >= positions[:, None, :]


def s2_mask(n: int, num_heads: int, config: S2Config) -> torch.Tensor:
    """The whole ``(num_heads, n, n)`` boolean mask S² amounts to, for checks and pictures (True = attend)."""
    group = config.group_size(n)
    masks = []
    for head in range(num_heads):
        shifted = config.shift and head >= num_heads // 2
        positions = group_positions(n, group, shifted)            # (groups, G)
        allowed = group_masks(n, group, shifted, config.wrap)     # (groups, G, G)
        full = torch.zeros(n, n, dtype=torch.bool)
        for g in range(n // group):
            full[positions[g][:, None], positions[g][None, :]] = allowed[g]
        masks.append(full)
    return torch.stack(masks)


def _blocks(mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Diagonal group blocks of a ``(B, h, n, n)`` mask: ``(B, h, groups, G, G)``."""
    return mask[:, :, positions[:, :, None], positions[:, None, :]]


def s2_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, config: S2Config,
                 attention_mask: torch.Tensor | None = None, scaling: float | None = None,
                 dropout: float = 0.0) -> torch.Tensor:
    """S²-Attn on ``(B, H, n, d)`` query/key/value with as many key as query heads; returns ``(B, n, H, d)``.

    The first half of the heads attends within consecutive groups of G tokens; the second half within
    groups shifted by G/2 (tokens rolled left by G/2, attended, rolled back). ``attention_mask`` is an
    optional ``(B, 1 or H, n, n)`` mask (bool, True = attend; or additive float) from the model, whose
    group blocks are combined with the causal masks of :func:`group_masks`.
    """
    batch, heads, n, dim = query.shape
    if key.shape[1] != heads:
        raise ValueError(f"s2_attention: {key.shape[1]} key heads for {heads} query heads; repeat the keys first")
    if config.shift and heads % 2:
        raise ValueError(f"S2-Attn shifts half of the heads: it needs an even head count, got {heads}")
    group = config.group_size(n)
    parts = [(slice(0, heads // 2), False), (slice(heads // 2, heads), True)] if config.shift else [(slice(0, heads), False)]
    own = torch.eye(group, dtype=torch.bool, device=query.device)
    outputs = []
    for heads_slice, shifted in parts:
        positions = group_positions(n, group, shifted, query.device)   # (groups, G)
        q, k, v = (t[:, heads_slice][:, :, positions] for t in (query, key, value))  # (B, h, groups, G, d)
        mask = group_masks(n, group, shifted, config.wrap, device=query.device)      # (groups, G, G)
        if attention_mask is not None:
            given = attention_mask if attention_mask.shape[1] == 1 else attention_mask[:, heads_slice]
            if given.dtype != torch.bool:  # additive: 0 = attend, very negative = masked
                given = given > torch.finfo(given.dtype).min / 2
            # a padding query whose whole group is padding sees itself, not nothing (which gives NaN)
            mask = (mask & _blocks(given, positions)) | own
        plain_causal = attention_mask is None and (not shifted or config.wrap == "roll")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if plain_causal else mask, dropout_p=dropout,
                                             scale=scaling, is_causal=plain_causal)
        restored = torch.empty_like(out.flatten(2, 3))                     # (B, h, n, d)
        restored[:, :, positions.flatten()] = out.flatten(2, 3)            # shift back
        outputs.append(restored)
    return torch.cat(outputs, dim=1).transpose(1, 2).contiguous()


def s2_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         *, s2_config: S2Config = S2Config(), **kwargs) -> tuple[torch.Tensor, None]:
    """A transformers attention function (``AttentionInterface``): S² in training, SDPA otherwise."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not module.training and s2_config.full_attention_in_eval:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[2] != key.shape[2]:
        raise ValueError("S2-Attn is for training on whole sequences (no KV cache): query and key lengths differ "
                         f"({query.shape[2]} vs {key.shape[2]}); use model.eval() to generate")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    return s2_attention(query, key, value, s2_config, attention_mask=attention_mask, scaling=scaling,
                        dropout=dropout if module.training else 0.0), None


def register_s2_attention(config: S2Config = S2Config(), name: str = "s2_attention") -> str:
    """Register S²-Attn with transformers under ``name`` (its masks as SDPA's); returns the name to pass as
    ``attn_implementation=`` or to ``model.set_attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    forward = functools.partial(s2_attention_forward, s2_config=config)
    AttentionInterface.register(name, forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    return name


def use_s2_attention(model: torch.nn.Module, config: S2Config = S2Config(), name: str = "s2_attention") -> torch.nn.Module:
    """Switch ``model`` (in place) to S²-Attn; checks the head count; returns the model."""
    heads = model.config.num_attention_heads
    if config.shift and heads % 2:
        raise ValueError(f"S2-Attn shifts half of the heads: {type(model).__name__} has {heads} heads, expected an "
                         "even number")
    model.set_attn_implementation(register_s2_attention(config, name))
    return model


def interpolated_rope(config, target_positions: int, original: int | None = None):
    """A copy of a model ``config`` whose RoPE positions are linearly interpolated (Chen et al. 2023, "PI")
    so that ``target_positions`` tokens map into the ``original`` ones (default ``max_position_embeddings``).

    Sets ``rope_parameters`` (transformers 5; ``rope_scaling`` is deprecated) to the ``linear`` type with
    ``factor = target / original``: position p is rotated as p / factor.
    """
    original = original or config.max_position_embeddings
    if target_positions < original:
        raise ValueError(f"target_positions ({target_positions}) must be >= the original context ({original})")
    params = dict(config.rope_parameters or {})
    if params.get("rope_type", "default") not in ("default", "linear"):
        raise ValueError(f"interpolated_rope extends 'default' RoPE, got rope_type {params['rope_type']!r}")
    previous = params.get("factor", 1.0) if params.get("rope_type") == "linear" else 1.0
    params.update(rope_type="linear", factor=previous * target_positions / original)
    scaled = copy.deepcopy(config)
    scaled.rope_parameters = params
    scaled.max_position_embeddings = max(target_positions, config.max_position_embeddings)
    return scaled


def extend_context(model: torch.nn.Module, target_positions: int, original: int | None = None) -> torch.nn.Module:
    """Give ``model`` (in place) linearly interpolated RoPE for ``target_positions`` tokens
    (:func:`interpolated_rope`); returns it.

    Replaces the config and rebuilds every rotary embedding module from it (their frequencies are
    computed once, at construction)."""
    scaled = interpolated_rope(model.config, target_positions, original)
    model.config.rope_parameters = scaled.rope_parameters
    model.config.max_position_embeddings = scaled.max_position_embeddings
    rebuilt = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if hasattr(child, "inv_freq") and hasattr(child, "rope_type"):
                fresh = type(child)(config=child.config).to(child.inv_freq.device)
                setattr(parent, child_name, fresh)
                rebuilt += 1
    if not rebuilt:
        raise ValueError(f"extend_context: no rotary embedding (a module with inv_freq and rope_type) in "
                         f"{type(model).__name__}")
    return model


def trainable_for_longlora(model: torch.nn.Module, patterns: tuple[str, ...] = ("embed", "norm")) -> int:
    """Unfreeze the parameters whose names contain one of ``patterns`` (LongLoRA trains embeddings and
    normalisation layers besides LoRA); returns how many parameters this made trainable."""
    added = 0
    for name, parameter in model.named_parameters():
        if any(p in name for p in patterns) and not parameter.requires_grad:
            parameter.requires_grad_(True)
            added += parameter.numel()
    if not added and not any(any(p in n for p in patterns) for n, _ in model.named_parameters()):
        raise ValueError(f"trainable_for_longlora: no parameter name contains any of {patterns}")
    return added


@torch.no_grad()
def passkey_retrieval(model: torch.nn.Module, tokenizer, dataset, *, batch_size: int = 4) -> list[dict]:
    """Score ``labkit.tasks.passkey`` prompts in one teacher-forced pass each: per prompt, ``retrieved``
    (greedy decoding starts with the key: every key token is the argmax given the key's earlier tokens)
    and ``key_logprob`` (log p of the key's tokens, nats). Right-padded batches on ``model.device``."""
    rows = []
    for start in range(0, len(dataset), batch_size):
        part = dataset.select(range(start, min(start + batch_size, len(dataset))))
        pairs = [(tokenizer(p)["input_ids"], tokenizer(" " + a, add_special_tokens=False)["input_ids"])
                 for p, a in zip(part["prompt"], part["answer"])]
        width = max(len(p) + len(a) for p, a in pairs)
        ids = torch.full((len(pairs), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for r, (p, a) in enumerate(pairs):
            ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            attention[r, : len(p) + len(a)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits.float()
        logprobs = logits.log_softmax(-1)
        for r, (p, a) in enumerate(pairs):
            span = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=logits.device)  # predicts the key tokens
            key = torch.tensor(a, device=logits.device)
            rows.append({"retrieved": bool((logits[r, span].argmax(-1) == key).all()),
                         "key_logprob": float(logprobs[r, span, key].sum()), "n_tokens": len(p)})
    return rows
