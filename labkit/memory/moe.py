"""What a mixture-of-experts block (Mixtral, Qwen3-MoE as transformers 5 runs them) saves for backward.

Every expert's weights are stored (and, in full fine-tuning, trained), but each token's activations
pass through only the ``experts_per_token`` (top-k) experts it is routed to, so per token the experts
keep k MLPs' worth of tensors, plus the router's probabilities and indices (Shazeer et al. 2017;
Jiang et al. 2024, Mixtral of Experts).
"""

from __future__ import annotations

from labkit.memory.trace import _T, _Trace


def moe_block(trace: _Trace, x, key: str):
    """Router then experts on ``x`` (the post-attention norm's output); returns the block's output."""
    arch, e, full = trace.arch, trace.e, trace.setup.method == "full"
    h, i, n, k = arch.hidden_size, arch.intermediate_size, arch.num_experts, arch.experts_per_token
    renormalise = True  # Mixtral always; Qwen3-MoE with norm_topk_prob (its released models set it)
    # router: logits = x @ W_r^T (W_r trains in full fine-tuning), softmax in fp32, top-k, renormalised in place
    if full:
        trace.save(x)
    if x.requires_grad or full:
        trace.save(_T(key + ".router_probs_fp32", n * 4, True))  # softmax keeps its output
        trace.save(_T(key + ".router_topk_indices", k * 8, True))
        if renormalise:  # top /= top.sum(): the division keeps the k values and their sum
            trace.save(_T(key + ".router_topk_fp32", k * 4, True))
            trace.save(_T(key + ".router_topk_sum_fp32", 4, True))
    # experts (transformers' grouped_mm path): the k (token, expert) rows a token makes are sorted by expert,
    # gathered, run through each expert's gated MLP, scaled by their routing weight and put back in order
    for name in ("gather_index", "weights_index", "unsort_index"):  # perm // k, perm, inverse perm (int64)
        trace.save(_T(f"{key}.experts.{name}_int64", k * 8, True))
    trace.save_bytes(key + ".experts.offsets_int32", n * 4)  # rows per expert, one per layer
    if full:  # the experts' weight gradients need their inputs
        trace.save(_T(key + ".experts.inputs", k * h * e, True))
        trace.save(_T(key + ".experts.act_times_up", k * i * e, True))
    trace.save(_T(key + ".experts.gate_up", k * 2 * i * e, True))  # act'(gate) and the product need gate and up
    trace.save(_T(key + ".experts.act", k * i * e, True))
    trace.save(_T(key + ".experts.out", k * h * e, True))  # the routing weight's gradient
    weight_bytes = 4 if arch.model_type == "mixtral" else e  # Qwen3-MoE casts the weights to the compute dtype
    trace.save(_T(key + ".experts.routing_weights", k * weight_bytes, True))
    return _T(key + ".moe_out", h * e, True)
