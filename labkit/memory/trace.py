"""The bookkeeping of the activation estimate: a tensor's bytes per token and whether it needs a gradient, and a
trace that records what each operator of a forward pass saves for backward (:mod:`labkit.memory.activations`)."""

from __future__ import annotations

from dataclasses import dataclass

from labkit.memory.architectures import Architecture
from labkit.memory.setup import TrainingSetup


@dataclass(frozen=True)
class _T:
    key: str
    bytes_per_token: float
    requires_grad: bool


class _Trace:
    """Propagates requires_grad through one forward pass and records each saved tensor once."""

    def __init__(self, arch: Architecture, setup: TrainingSetup):
        self.arch, self.setup = arch, setup
        self.e = setup.compute_bytes
        self.tokens = setup.tokens
        self.saved: dict[str, int] = {}

    def save(self, t: _T) -> None:
        self.saved.setdefault(t.key, round(t.bytes_per_token * self.tokens))

    def save_bytes(self, key: str, nbytes: int) -> None:
        self.saved.setdefault(key, nbytes)

    def rmsnorm(self, x: _T, key: str, weight_trains: bool, width: int | None = None, groups: int = 1) -> _T:
        """RMSNorm over ``width`` features (default hidden), ``groups`` normalised slices a token (heads for a
        per-head q/k norm), in the family's style (``Architecture.rmsnorm``): Llama's ``w * x_norm.to(dtype)``
        keeps the 16-bit normalised input for the weight's gradient; OLMo-2 and Gemma multiply in fp32 and
        keep it in fp32; Gemma's ``1 + w`` is one more fp32 vector a norm keeps."""
        w, style = width or self.arch.hidden_size, self.arch.rmsnorm
        x32 = x if self.e == 4 else _T(key + ".input_fp32", 4 * w, x.requires_grad)
        if x.requires_grad:  # pow and mul need x32; mul needs the fp32 inverse rms
            self.save(x32)
            self.save(_T(key + ".inv_rms_fp32", 4 * groups, True))
            if style == "gemma":
                self.save_bytes(key + ".one_plus_weight_fp32", 4 * (w // groups))
        if weight_trains:  # the weight's gradient needs the normalised input
            self.save(_T(key + ".normalised", w * (self.e if style == "llama" else 4), True))
        return _T(key + ".out", w * self.e, x.requires_grad or weight_trains)

    def linear(self, x: _T, key: str, name: str, in_f: int, out_f: int, base_trains: bool) -> _T:
        """A linear layer; with an adapter, peft's ``base(x) + lora_B(lora_A(x)) * scaling``."""
        s = self.setup
        adapted = s.adapters and name in s.target_modules
        if base_trains or adapted:  # dW = dy^T x (lora_A's gradient needs x as well)
            self.save(x)
        if adapted:
            self.save(_T(f"{key}.lora_A_out", s.r * self.e, True))
            if s.method == "dora":  # magnitude's gradient needs both branches' outputs (Liu et al. 2024)
                self.save(_T(f"{key}.dora_base_out", out_f * self.e, True))
                self.save(_T(f"{key}.dora_lora_out", out_f * self.e, True))
                # per-feature vectors (not per token): the detached weight norm, magnitude / norm, and
                # (magnitude / norm - 1), which the base output's gradient needs when x carries one
                self.save_bytes(f"{key}.dora_weight_norm", out_f * self.e)
                self.save_bytes(f"{key}.dora_scale", out_f * self.e)
                if x.requires_grad:
                    self.save_bytes(f"{key}.dora_scale_minus_1", out_f * self.e)
        return _T(key + ".out", out_f * self.e, x.requires_grad or base_trains or adapted)

    def attention(self, q: _T, k: _T, v: _T, key: str) -> _T:
        a, g, d, e, seq = self.arch.num_heads, self.arch.num_kv_heads, self.arch.head_dim, self.e, self.setup.seq_len
        if self.setup.attention_groups > 1:
            if self.setup.attn_implementation == "eager":
                return self.grouped_attention(q, k, v, key)
            # a fused kernel over the groups (LongLoRA's FlashAttention code folds them into the batch): the kv heads
            # are repeated and gathered into groups, then kept as SDPA keeps them -- linear in seq_len
            k, v = _T(key + ".k_grouped", a * d * e, k.requires_grad), _T(key + ".v_grouped", a * d * e, v.requires_grad)
            q = _T(key + ".q_grouped", a * d * e, q.requires_grad)
        if self.setup.attn_implementation == "eager":
            if v.bytes_per_token != g * d * e:  # Phi-3's v is a slice of qkv; matmul copies the strided view
                v = _T(key + ".v_copy", g * d * e, v.requires_grad)
            # repeat_kv copies k and v per query head; with one kv head expand+reshape is a view for one sequence only
            if 1 < g < a or (g == 1 < a and self.setup.sequences > 1):
                k, v = _T(key + ".k_repeated", a * d * e, k.requires_grad), _T(key + ".v_repeated", a * d * e, v.requires_grad)
            if k.requires_grad:
                self.save(q)
            if q.requires_grad:
                self.save(k)
            scores_rg = q.requires_grad or k.requires_grad
            if self.arch.attn_softcap and scores_rg:  # Gemma-2: c * tanh(scores / c); tanh keeps its output
                self.save(_T(key + ".softcap_tanh", a * seq * e, True))
            probs = _T(key + ".softmax_fp32", a * seq * 4, scores_rg)  # softmax(dtype=fp32) keeps its result
            if scores_rg:
                self.save(probs)
            if e != 4:
                probs = _T(key + ".softmax_cast", a * seq * e, scores_rg)
            if v.requires_grad:
                self.save(probs)
            if probs.requires_grad:
                self.save(v)
            out = _T(key + ".attn_out", a * d * e, probs.requires_grad or v.requires_grad)
        else:  # SDPA's fused kernel / FlashAttention: q, k, v (kv heads not repeated), output, fp32 logsumexp
            rg = q.requires_grad or k.requires_grad or v.requires_grad
            out = _T(key + ".attn_out", a * d * e, rg)  # laid out as q: (b, s, heads, d), the transpose is free
            if rg:
                for t in (q, k, v, out, _T(key + ".logsumexp_fp32", a * 4, True)):
                    self.save(t)
            if not self.arch.fused_projections:
                return out
            # Phi-3's rotary concatenates, so q and the output are (b, heads, s, d): the transpose copies
        return _T(key + ".attn_out_transposed", a * d * e, out.requires_grad)  # .transpose(1, 2).contiguous() copies

    def grouped_attention(self, q: _T, k: _T, v: _T, key: str) -> _T:
        """S²-Attn as ``labkit.longcontext`` runs it (Chen et al. 2023): each half of the heads gathers its queries,
        keys and values (kv heads repeated) into groups of G = seq_len / attention_groups tokens and attends within
        them; the 5-D group tensors take PyTorch's math kernel, which keeps q, k, v and the G-wide probabilities a
        head and token (softmax output, also what the product with v needs), in fp32 on the CPU (an upper bound
        for a 16-bit GPU run), plus each half's int64 group positions."""
        a, d, seq = self.arch.num_heads, self.arch.head_dim, self.setup.seq_len
        group = seq // self.setup.attention_groups
        rg = q.requires_grad or k.requires_grad or v.requires_grad
        if rg:
            for name in ("q", "k", "v"):
                self.save(_T(f"{key}.s2_{name}_fp32", a * d * 4, True))
            self.save(_T(key + ".s2_probs_fp32", a * group * 4, True))
            self.save_bytes(key + ".s2_positions_int64", 2 * seq * 8)
        return _T(key + ".attn_out_transposed", a * d * self.e, rg)  # scattered back, concatenated, made contiguous
