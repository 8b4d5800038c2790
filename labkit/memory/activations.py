"""Which tensors autograd keeps for the backward pass of a Llama-style decoder, and their bytes.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", §4.1)
count the activations of a GPT layer as ``s*b*h*(34 + 5*a*s/h)`` bytes in 16-bit with dropout.
Their method -- list every tensor an operator saves for its backward and add up the bytes -- is
the one used here, applied to what transformers' Llama/Qwen2 code actually runs (RMSNorm computed
in fp32, rotary embeddings, grouped-query attention, SwiGLU, no dropout) and to which weights
train. An operator only saves what the gradients it must compute need (e.g. ``x @ W`` keeps ``x``
only when ``W`` trains), so freezing the base (LoRA) removes most linear-layer inputs. For full
fine-tuning with eager attention and no GQA the rules below add up to, per layer and token
(``e`` bytes per element, ``i`` the MLP width, ``[e<4]`` 1 in 16-bit, else 0):

    8h + 8 + (8h + 4i)*e + a*s*(4 + e*[e<4])

i.e. RMSNorm x2 (fp32 input, fp32 inverse rms, normalised, output), q, k, v and o_proj's input,
the fp32 softmax (plus its 16-bit cast), and four MLP tensors (gate, up, silu(gate), product).
SDPA/FlashAttention (Dao et al. 2022) replace the ``a*s`` softmax by an fp32 log-sum-exp (``4a``)
and the attention output. With gradient checkpointing (Chen et al. 2016) a layer keeps only its
input, ``h*e``; one layer's activations come back as a transient during backward.
"""

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

    def rmsnorm(self, x: _T, key: str, weight_trains: bool) -> _T:
        """LlamaRMSNorm: ``w * (x32 * rsqrt(mean(x32**2) + eps)).to(dtype)``."""
        h = self.arch.hidden_size
        x32 = x if self.e == 4 else _T(key + ".input_fp32", 4 * h, x.requires_grad)
        if x.requires_grad:  # pow and mul need x32; mul needs the fp32 inverse rms
            self.save(x32)
            self.save(_T(key + ".inv_rms_fp32", 4, True))
        if weight_trains:  # the weight's gradient needs the normalised input
            self.save(_T(key + ".normalised", h * self.e, True))
        return _T(key + ".out", h * self.e, x.requires_grad or weight_trains)

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
        if self.setup.attn_implementation == "eager":
            if 1 < g < a:  # repeat_kv copies k and v per query head (with one kv head, expand+reshape is a view)
                k, v = _T(key + ".k_repeated", a * d * e, k.requires_grad), _T(key + ".v_repeated", a * d * e, v.requires_grad)
            if k.requires_grad:
                self.save(q)
            if q.requires_grad:
                self.save(k)
            scores_rg = q.requires_grad or k.requires_grad
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
            out = _T(key + ".attn_out", a * d * e, rg)  # laid out (b, s, heads, d): the transpose is free
            if rg:
                for t in (q, k, v, out, _T(key + ".logsumexp_fp32", a * 4, True)):
                    self.save(t)
            return out
        return _T(key + ".attn_out_transposed", a * d * e, out.requires_grad)  # .transpose(1, 2).contiguous() copies

    def layer(self, x: _T, key: str) -> _T:
        arch, s, full = self.arch, self.setup, self.setup.method == "full"
        shapes = arch.linear_shapes()

        def lin(t, name):
            return self.linear(t, f"{key}.{name}", name, *shapes[name], full)

        n1 = self.rmsnorm(x, key + ".input_layernorm", full)
        q, k, v = lin(n1, "q_proj"), lin(n1, "k_proj"), lin(n1, "v_proj")
        if q.requires_grad or k.requires_grad:  # rotary cos/sin, (1, s, head_dim), shared by all layers
            self.save_bytes("rope.cos_sin", 2 * s.seq_len * arch.head_dim * self.e)
        q = _T(key + ".q_rotated", q.bytes_per_token, q.requires_grad)
        k = _T(key + ".k_rotated", k.bytes_per_token, k.requires_grad)
        o = lin(self.attention(q, k, v, key + ".attn"), "o_proj")
        x = _T(key + ".residual", arch.hidden_size * self.e, x.requires_grad or o.requires_grad)
        n2 = self.rmsnorm(x, key + ".post_attention_layernorm", full)
        gate, up = lin(n2, "gate_proj"), lin(n2, "up_proj")
        if gate.requires_grad:  # silu'(gate)
            self.save(gate)
        act = _T(key + ".act", gate.bytes_per_token, gate.requires_grad)
        if up.requires_grad:
            self.save(act)
        if act.requires_grad:
            self.save(up)
        down = lin(_T(key + ".act_times_up", act.bytes_per_token, act.requires_grad or up.requires_grad), "down_proj")
        return _T(key + ".out", arch.hidden_size * self.e, x.requires_grad or down.requires_grad)


def saved_tensors(arch: Architecture, setup: TrainingSetup) -> tuple[dict[str, int], dict[str, int]]:
    """(activations, logits): bytes of every tensor autograd keeps, keyed by where it comes from.

    ``logits`` holds what the loss keeps: transformers upcasts the logits to fp32 and
    ``cross_entropy`` saves the fp32 log-softmax (``b*s*V*4`` bytes) and the int64 targets.
    Gemma (GeLU MLP, ``1 + w`` RMSNorm, scaled embeddings) is estimated with the Llama rules; unlike
    Llama, Mistral and Qwen2 it is not validated against measurement.
    """
    trace = _Trace(arch, setup)
    adapters_save = setup.modules_to_save
    embed_trains = setup.method == "full" or "embed_tokens" in adapters_save
    if embed_trains:  # the embedding's gradient is a scatter by token id
        trace.save(_T("embed.input_ids", 8, False))
    x = _T("embed.out", arch.hidden_size * trace.e, embed_trains)
    for layer in range(arch.num_layers):
        key = f"layer{layer}"
        if setup.gradient_checkpointing == "full":  # torch.utils.checkpoint keeps the layer's input only
            trace.save(_T(key + ".input", x.bytes_per_token, True))
            x = _T(key + ".out", x.bytes_per_token, True)
        else:
            x = trace.layer(x, key)
    head_trains = setup.method == "full" or "lm_head" in adapters_save or (arch.tie_word_embeddings and embed_trains)
    n = trace.rmsnorm(x, "norm", setup.method == "full")
    logits = trace.linear(n, "lm_head", "lm_head", arch.hidden_size, arch.vocab_size, head_trains)
    activations = trace.saved
    loss: dict[str, int] = {}
    if logits.requires_grad:
        tokens = setup.tokens
        if setup.logits == "full":
            loss["log_softmax_fp32"] = tokens * arch.vocab_size * 4
            loss["total_weight"] = 4
        else:  # a fused kernel keeps its input and one fp32 log-sum-exp per token, recomputing logits in chunks
            loss["logsumexp_fp32"] = tokens * 4
            if not head_trains:  # (a trained head's input is already among the activations)
                loss["hidden_input"] = tokens * arch.hidden_size * trace.e
        # transformers pads the labels by one and slices them; the slice needs a copy unless b == 1
        loss["targets_int64"] = (tokens if setup.batch_size > 1 else setup.seq_len + 1) * 8
    return activations, loss


def layer_activation_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """Bytes one middle decoder layer saves without checkpointing (what checkpointing recomputes)."""
    trace = _Trace(arch, setup)
    trace.layer(_T("in", arch.hidden_size * trace.e, True), "layer")
    return sum(v for k, v in trace.saved.items() if k != "rope.cos_sin")
