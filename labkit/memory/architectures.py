"""Decoder architectures as the numbers memory depends on, with an offline registry of popular models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma")
"""Decoder families whose layer layout (pre-norm, GQA attention, gated MLP) the estimator models."""


@dataclass(frozen=True)
class Architecture:
    """The shape of a Llama-style decoder: everything parameter and activation counts need."""

    name: str
    model_type: str
    """``llama``, ``mistral``, ``qwen2`` or ``gemma`` (transformers' ``model_type``)."""
    hidden_size: int
    intermediate_size: int
    """Width of the gated MLP (gate_proj, up_proj: hidden -> intermediate; down_proj back)."""
    num_layers: int
    num_heads: int
    num_kv_heads: int
    """Key/value heads; fewer than ``num_heads`` is grouped-query attention (Ainslie et al. 2023)."""
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    """The LM head reuses the input embedding matrix (one V x h matrix instead of two)."""
    attention_bias: bool = False
    """q/k/v projections carry a bias (Qwen2)."""

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{self.name}: model_type {self.model_type!r} is not supported; "
                             f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}")
        for field in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{self.name}: {field} must be >= 1, got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{module name: (in_features, out_features)}`` of one decoder layer's linear layers."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: seven linears, their biases, two RMSNorm weights."""
        linear = sum(a * b for a, b in self.linear_shapes().values())
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
        return linear + bias + 2 * self.hidden_size

    def embedding_parameters(self) -> int:
        """Input embedding plus LM head (counted once when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def num_parameters(self) -> int:
        """All parameters; ties counted once, as ``sum(p.numel() for p in model.parameters())`` does."""
        return self.num_layers * self.layer_parameters() + self.embedding_parameters() + self.hidden_size


def _arch(name, model_type, h, i, layers, heads, kv, vocab, tie, head_dim=None, bias=False) -> Architecture:
    return Architecture(name, model_type, h, i, layers, heads, kv, head_dim or h // heads, vocab, tie, bias)


# Values typed from each model's published config.json (hidden_size, intermediate_size,
# num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size, tie_word_embeddings, head_dim).
_REGISTRY: dict[str, Architecture] = {a.name: a for a in [
    _arch("Llama-2-7B", "llama", 4096, 11008, 32, 32, 32, 32000, False),
    _arch("Llama-2-13B", "llama", 5120, 13824, 40, 40, 40, 32000, False),
    _arch("Llama-2-70B", "llama", 8192, 28672, 80, 64, 8, 32000, False),
    _arch("Llama-3.2-1B", "llama", 2048, 8192, 16, 32, 8, 128256, True),
    _arch("Llama-3.2-3B", "llama", 3072, 8192, 28, 24, 8, 128256, True),
    _arch("Llama-3.1-8B", "llama", 4096, 14336, 32, 32, 8, 128256, False),
    _arch("Llama-3.1-70B", "llama", 8192, 28672, 80, 64, 8, 128256, False),
    _arch("Mistral-7B-v0.1", "mistral", 4096, 14336, 32, 32, 8, 32000, False),
    _arch("Qwen2.5-0.5B", "qwen2", 896, 4864, 24, 14, 2, 151936, True, bias=True),
    _arch("Qwen2.5-1.5B", "qwen2", 1536, 8960, 28, 12, 2, 151936, True, bias=True),
    _arch("Qwen2.5-3B", "qwen2", 2048, 11008, 36, 16, 2, 151936, True, bias=True),
    _arch("Qwen2.5-7B", "qwen2", 3584, 18944, 28, 28, 4, 152064, False, bias=True),
    _arch("Qwen2.5-14B", "qwen2", 5120, 13824, 48, 40, 8, 152064, False, bias=True),
    _arch("Qwen2.5-32B", "qwen2", 5120, 27648, 64, 40, 8, 152064, False, bias=True),
    _arch("Qwen2.5-72B", "qwen2", 8192, 29568, 80, 64, 8, 152064, False, bias=True),
    _arch("SmolLM2-135M", "llama", 576, 1536, 30, 9, 3, 49152, True),
    _arch("SmolLM2-360M", "llama", 960, 2560, 32, 15, 5, 49152, True),
    _arch("SmolLM2-1.7B", "llama", 2048, 8192, 24, 32, 32, 49152, True),
    _arch("Gemma-2B", "gemma", 2048, 16384, 18, 8, 1, 256000, True, head_dim=256),
    _arch("Gemma-7B", "gemma", 3072, 24576, 28, 16, 16, 256000, True, head_dim=256),
]}

ARCHITECTURES: tuple[str, ...] = tuple(_REGISTRY)
"""Names accepted wherever a model is expected (no download: the numbers live in labkit)."""


def _from_mapping(name: str, cfg: dict[str, Any]) -> Architecture:
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{name}: model_type {model_type!r} is not supported; expected one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in required if cfg.get(k) is None]
    if missing:
        raise ValueError(f"{name}: config lacks {missing}")
    heads = cfg["num_attention_heads"]
    return Architecture(
        name=name, model_type=model_type, hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, vocab_size=cfg["vocab_size"],
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", model_type == "gemma")),
        attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
    )


def resolve(model: Any) -> Architecture:
    """An :class:`Architecture` from a registry name, a transformers config (or model), a ``config.json`` path, or itself."""
    if isinstance(model, Architecture):
        return model
    if isinstance(model, (str, Path)):
        if str(model) in _REGISTRY:
            return _REGISTRY[str(model)]
        path = Path(model)
        if path.is_dir():
            path = path / "config.json"
        if path.is_file():
            return _from_mapping(str(model), json.loads(path.read_text()))
        raise ValueError(f"model {str(model)!r} is neither a registry name nor a config.json path; "
                         f"registry names are {', '.join(ARCHITECTURES)}")
    config = getattr(model, "config", model)  # a PreTrainedModel carries its config
    if hasattr(config, "to_dict") and hasattr(config, "model_type"):
        return _from_mapping(getattr(config, "name_or_path", "") or config.model_type, config.to_dict())
    raise ValueError(f"model must be a registry name, a transformers config or model, or a config.json path; got {type(model).__name__}")
