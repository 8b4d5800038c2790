"""Decoder architectures as the numbers memory depends on, with an offline registry of popular models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma", "qwen3", "olmo2", "phi3", "mixtral", "qwen3_moe", "gemma2",
                         "gemma3_text")
"""Decoder families whose layer layout (GQA attention, gated MLP or mixture of experts) the estimator models."""
QK_NORMS = ("none", "head", "full")
NORM_POSITIONS = ("pre", "post", "sandwich")
RMSNORMS = ("llama", "fp32", "gemma")
_FAMILY = {  # what sets each family apart from Llama, as transformers 5 builds it
    "qwen3": dict(qk_norm="head"), "olmo2": dict(qk_norm="full", norm_position="post", rmsnorm="fp32"),
    "gemma2": dict(norm_position="sandwich", rmsnorm="gemma", attn_softcap=True, logit_softcap=True),
    "gemma3_text": dict(norm_position="sandwich", rmsnorm="gemma", qk_norm="head"),
    "phi3": dict(fused_projections=True), "qwen3_moe": dict(qk_norm="head"),
}


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
    qk_norm: str = "none"
    """RMSNorm on queries and keys before rotary embeddings: ``head`` (over each head's ``head_dim``: Qwen3,
    Qwen3-MoE) or ``full`` (over the whole projection, ``heads * head_dim``: OLMo-2)."""
    norm_position: str = "pre"
    """``pre`` (RMSNorm before attention and MLP) or ``post`` (OLMo-2: on each sublayer's output, weight applied in fp32)."""
    rmsnorm: str = "llama"
    """How RMSNorm applies its weight: ``llama`` (``w * x_norm.to(dtype)``), ``fp32`` (OLMo-2: ``(w * x_norm).to(dtype)``,
    in fp32) or ``gemma`` (``(x_norm * (1 + w)).to(dtype)``, in fp32)."""
    attn_softcap: bool = False
    """Gemma-2: attention scores soft-capped, ``c * tanh(scores / c)`` (eager attention keeps the tanh)."""
    logit_softcap: bool = False
    """Gemma-2: output logits soft-capped, ``c * tanh(logits / c)``: one more ``b*s*V`` tensor kept."""
    sliding_window: int = 0
    """Gemma-3: tokens its sliding-window layers (five of every six) attend to; 0 for none. Under SDPA a
    sequence longer than the window makes each such layer keep two boolean ``b x s x s`` masks."""
    fused_projections: bool = False
    """Phi-3: one ``qkv_proj`` and one ``gate_up_proj`` linear instead of q/k/v_proj and gate/up_proj
    (so LoRA's target names differ too)."""
    num_experts: int = 0
    """Mixture of experts (Mixtral, Qwen3-MoE): experts per layer, each a gated MLP of ``intermediate_size``
    (the config's ``moe_intermediate_size`` for Qwen3-MoE), stored as 3-D tensors; 0 for a dense MLP."""
    experts_per_token: int = 0
    """Experts each token is routed to (top-k, ``num_experts_per_tok``)."""

    @property
    def default_attention(self) -> str:
        """The attention implementation transformers uses for this family unless told otherwise: ``eager`` for
        Gemma-2 (SDPA cannot soft-cap its scores), ``sdpa`` for the others. ``estimate_memory`` and
        ``measure_memory`` use it when no ``attn_implementation`` is given."""
        return "eager" if self.model_type == "gemma2" else "sdpa"

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{self.name}: model_type {self.model_type!r} is not supported; "
                             f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}")
        for field in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{self.name}: {field} must be >= 1, got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.qk_norm not in QK_NORMS or self.norm_position not in NORM_POSITIONS or self.rmsnorm not in RMSNORMS:
            raise ValueError(f"{self.name}: qk_norm {self.qk_norm!r} / norm_position {self.norm_position!r} / rmsnorm "
                             f"{self.rmsnorm!r}; expected one of {QK_NORMS} / {NORM_POSITIONS} / {RMSNORMS}")
        if self.num_experts and not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(f"{self.name}: experts_per_token must be in [1, num_experts={self.num_experts}], "
                             f"got {self.experts_per_token}")

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{module name: (in_features, out_features)}`` of one decoder layer's ``nn.Linear`` layers
        (a mixture of experts' experts and router are parameters, not linears: see :meth:`expert_parameters`)."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        if self.fused_projections:
            attention = {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h)}
            mlp = {"gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        else:
            attention = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
            mlp = {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return attention if self.num_experts else attention | mlp

    def expert_parameters(self) -> dict[str, int]:
        """Numels of one layer's mixture-of-experts tensors: router (experts x h) and every expert's
        ``gate_up_proj`` (2i x h) and ``down_proj`` (h x i), as transformers 5 stores them (3-D); {} when dense."""
        if not self.num_experts:
            return {}
        h, i, n = self.hidden_size, self.intermediate_size, self.num_experts
        return {"router": n * h, "experts.gate_up_proj": n * 2 * i * h, "experts.down_proj": n * h * i}

    def norm_parameters(self) -> dict[str, int]:
        """Numels of one layer's RMSNorm weights: the two around attention and MLP, plus q/k norms."""
        h, d = self.hidden_size, self.head_dim
        names = {"pre": ("input_layernorm", "post_attention_layernorm"),
                 "post": ("post_attention_layernorm", "post_feedforward_layernorm"),
                 "sandwich": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                              "post_feedforward_layernorm")}[self.norm_position]
        norms = {name: h for name in names}
        if self.qk_norm == "head":
            norms |= {"q_norm": d, "k_norm": d}
        elif self.qk_norm == "full":
            norms |= {"q_norm": self.num_heads * d, "k_norm": self.num_kv_heads * d}
        return norms

    def rope_tables(self) -> int:
        """Rotary (cos, sin) pairs a forward computes: Gemma-3 has one for its sliding-window layers and one for
        its global ones (every sixth layer), the others one."""
        return 2 if self.model_type == "gemma3_text" and self.num_layers >= 6 else 1

    def sliding_layer(self, index: int) -> bool:
        """Whether layer ``index`` attends within ``sliding_window`` (Gemma-3's pattern: all but every sixth)."""
        return bool(self.sliding_window) and self.model_type == "gemma3_text" and (index + 1) % 6 != 0

    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: its linears, their biases, norms, and any router and experts."""
        linear = sum(a * b for a, b in self.linear_shapes().values())
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
        return linear + bias + sum(self.norm_parameters().values()) + sum(self.expert_parameters().values())

    def active_parameters(self) -> int:
        """Parameters one token uses: all but the experts it is not routed to (= ``num_parameters`` when dense)."""
        if not self.num_experts:
            return self.num_parameters()
        unused = (self.num_experts - self.experts_per_token) * 3 * self.hidden_size * self.intermediate_size
        return self.num_parameters() - self.num_layers * unused

    def embedding_parameters(self) -> int:
        """Input embedding plus LM head (counted once when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def num_parameters(self) -> int:
        """All parameters; ties counted once, as ``sum(p.numel() for p in model.parameters())`` does."""
        return self.num_layers * self.layer_parameters() + self.embedding_parameters() + self.hidden_size


def _arch(name, model_type, h, i, layers, heads, kv, vocab, tie, head_dim=None, bias=False, experts=0, top_k=0) -> Architecture:
    return Architecture(name, model_type, h, i, layers, heads, kv, head_dim or h // heads, vocab, tie, bias,
                        num_experts=experts, experts_per_token=top_k, **_FAMILY.get(model_type, {}))


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
    # Each checked against the parameter count the Hugging Face Hub reports for it (see tests/test_memory_families.py)
    _arch("Qwen3-0.6B", "qwen3", 1024, 3072, 28, 16, 8, 151936, True, head_dim=128),
    _arch("Qwen3-8B", "qwen3", 4096, 12288, 36, 32, 8, 151936, False, head_dim=128),
    _arch("Gemma-2-2B", "gemma2", 2304, 9216, 26, 8, 4, 256000, True, head_dim=256),
    _arch("Phi-3-mini-4k", "phi3", 3072, 8192, 32, 32, 32, 32064, False),
    _arch("OLMo-2-1124-7B", "olmo2", 4096, 11008, 32, 32, 32, 100352, False),
    _arch("Mixtral-8x7B", "mixtral", 4096, 14336, 32, 32, 8, 32000, False, experts=8, top_k=2),
    _arch("Qwen3-30B-A3B", "qwen3_moe", 2048, 768, 48, 32, 4, 151936, False, head_dim=128, experts=128, top_k=8),
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
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0 if model_type in ("mixtral", "qwen3_moe") else 0
    if model_type == "qwen3_moe" and (cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1):
        raise ValueError(f"{name}: qwen3_moe with dense layers (mlp_only_layers, decoder_sparse_step != 1) is not "
                         "supported; expected every layer a mixture of experts")
    intermediate = cfg.get("moe_intermediate_size") if model_type == "qwen3_moe" else cfg["intermediate_size"]
    return Architecture(
        name=name, model_type=model_type, hidden_size=cfg["hidden_size"], intermediate_size=intermediate,
        num_layers=cfg["num_hidden_layers"], num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, vocab_size=cfg["vocab_size"],
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", model_type.startswith("gemma"))),
        attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
        num_experts=experts, experts_per_token=cfg.get("num_experts_per_tok") or 0 if experts else 0,
        **(_FAMILY.get(model_type, {}) | ({"attn_softcap": cfg.get("attn_logit_softcapping") is not None,
                                           "logit_softcap": cfg.get("final_logit_softcapping") is not None}
                                          if model_type in ("gemma2", "gemma3_text") else {})
           | ({"sliding_window": cfg.get("sliding_window") or 0} if model_type == "gemma3_text" else {})),
    )


def check_setup(arch: Architecture, setup: Any) -> None:
    """Refuse what ``arch`` cannot train as ``setup`` says: adapters none of whose ``target_modules`` is one of
    its linears (e.g. q_proj on Phi-3), SDPA on Gemma-2 (transformers refuses it: SDPA cannot soft-cap)."""
    if arch.model_type == "gemma2" and setup.attn_implementation == "sdpa":
        raise ValueError(f"{arch.name}: Gemma-2 soft-caps its attention scores, which SDPA cannot; transformers refuses "
                         "attn_implementation 'sdpa' for it; expected 'eager' or 'flash'")
    if getattr(setup, "attention_groups", 1) > 1 and arch.num_heads % 2:
        raise ValueError(f"{arch.name}: S²-Attn (attention_groups > 1) shifts half of the heads; it has {arch.num_heads} "
                         "attention heads, expected an even number")
    if setup.adapters and not set(setup.target_modules) & set(arch.linear_shapes()):
        raise ValueError(f"{arch.name}: none of target_modules {list(setup.target_modules)} is one of its linears; "
                         f"expected some of {', '.join(arch.linear_shapes())}")


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
