"""The tensors one decoder layer saves for backward, family by family: attention (q/k norms, fused
projections), a gated MLP or a mixture of experts, pre- or post-norm."""

from __future__ import annotations

from labkit.memory.trace import _T, _Trace


def decoder_layer(trace: _Trace, x, key: str):
    """One layer as transformers 5 runs it: Llama/Mistral/Qwen2/Qwen3/Phi-3/Mixtral/Qwen3-MoE (pre-norm)
    or OLMo-2 (post-norm); returns the layer's output."""
    arch, s, e = trace.arch, trace.setup, trace.e
    full = s.method == "full"
    shapes = arch.linear_shapes()

    def lin(t, name):
        return trace.linear(t, f"{key}.{name}", name, *shapes[name], full)

    position = arch.norm_position
    a_in = x if position == "post" else trace.rmsnorm(x, key + ".input_layernorm", full)
    q, k, v = _attention_inputs(trace, a_in, key, lin)
    index = int(key[5:]) if key[5:].isdigit() else -1  # "layer<i>"
    if s.attn_implementation == "sdpa" and arch.sliding_layer(index) and s.seq_len > arch.sliding_window:
        trace.save_bytes(key + ".sliding_masks_bool", 2 * s.sequences * s.seq_len ** 2)  # (b, 1, s, s), twice
    o = lin(trace.attention(q, k, v, key + ".attn"), "o_proj")
    if position != "pre":
        o = trace.rmsnorm(o, key + ".post_attention_layernorm", full)
    x = _T(key + ".residual", arch.hidden_size * e, x.requires_grad or o.requires_grad)
    m_in = {"pre": "post_attention_layernorm", "post": None, "sandwich": "pre_feedforward_layernorm"}[position]
    m_in = trace.rmsnorm(x, f"{key}.{m_in}", full) if m_in else x
    if arch.num_experts:
        from labkit.memory.moe import moe_block

        down = moe_block(trace, m_in, key)
    else:
        down = _mlp(trace, m_in, key, lin)
    if position != "pre":
        down = trace.rmsnorm(down, key + ".post_feedforward_layernorm", full)
    return _T(key + ".out", arch.hidden_size * e, x.requires_grad or down.requires_grad)


def _attention_inputs(trace: _Trace, x, key: str, lin):
    """q, k (normalised if the family does, then rotated) and v."""
    arch, s, e = trace.arch, trace.setup, trace.e
    a, g, d = arch.num_heads, arch.num_kv_heads, arch.head_dim
    if arch.fused_projections:  # q, k, v are slices of one output: keeping v keeps all of it
        qkv = lin(x, "qkv_proj")
        q, k, v = _T(qkv.key + ".q", a * d * e, qkv.requires_grad), _T(qkv.key + ".k", g * d * e, qkv.requires_grad), qkv
    else:
        q, k, v = lin(x, "q_proj"), lin(x, "k_proj"), lin(x, "v_proj")
    if arch.qk_norm != "none":
        per_head = arch.qk_norm == "head"
        q = trace.rmsnorm(q, key + ".q_norm", s.method == "full", width=a * d, groups=a if per_head else 1)
        k = trace.rmsnorm(k, key + ".k_norm", s.method == "full", width=g * d, groups=g if per_head else 1)
    if q.requires_grad or k.requires_grad:  # rotary cos/sin, (1, s, head_dim), shared by all layers; fp32 in OLMo-2
        trace.save_bytes("rope.cos_sin", arch.rope_tables() * 2 * s.seq_len * d * (4 if arch.model_type == "olmo2" else e))
    return _T(key + ".q_rotated", a * d * e, q.requires_grad), _T(key + ".k_rotated", g * d * e, k.requires_grad), v


def _mlp(trace: _Trace, x, key: str, lin):
    """The gated MLP ``down(act(gate(x)) * up(x))``; Phi-3's gate and up are halves of one ``gate_up_proj`` output."""
    i_bytes = trace.arch.intermediate_size * trace.e
    if trace.arch.fused_projections:
        gate = up = lin(x, "gate_up_proj")
    else:
        gate, up = lin(x, "gate_proj"), lin(x, "up_proj")
    if gate.requires_grad:  # act'(gate)
        trace.save(gate)
    act = _T(key + ".act", i_bytes, gate.requires_grad)
    if up.requires_grad:
        trace.save(act)
    if act.requires_grad:
        trace.save(up)
    return lin(_T(key + ".act_times_up", i_bytes, act.requires_grad or up.requires_grad), "down_proj")
