"""Which tensors autograd keeps for the backward pass of a Llama-style decoder, and their bytes.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", §4.1)
count the activations of a GPT layer as ``s*b*h*(34 + 5*a*s/h)`` bytes in 16-bit with dropout.
Their method -- list every tensor an operator saves for its backward and add up the bytes -- is
the one used here, applied to what transformers' Llama/Qwen2 code actually runs (RMSNorm computed
in fp32, rotary embeddings, grouped-query attention, SwiGLU, no dropout) and to which weights
train; :mod:`labkit.memory.layers` and :mod:`labkit.memory.moe` apply it to the other families. An operator only saves what the gradients it must compute need (e.g. ``x @ W`` keeps ``x``
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

import dataclasses

from labkit.memory.architectures import Architecture
from labkit.memory.layers import decoder_layer
from labkit.memory.setup import TrainingSetup
from labkit.memory.trace import _T, _Trace


def saved_tensors(arch: Architecture, setup: TrainingSetup) -> tuple[dict[str, int], dict[str, int]]:
    """(activations, logits): bytes of every tensor autograd keeps, keyed by where it comes from.

    ``logits`` holds what the loss keeps: transformers upcasts the logits to fp32 and
    ``cross_entropy`` saves the fp32 log-softmax (``b*s*V*4`` bytes) and the int64 targets.
    Gemma (1.0: ``model_type`` ``gemma``) is estimated with the Llama rules and, unlike the other
    families (Gemma-2 and Gemma-3 included), not validated against measurement.
    """
    trace = _Trace(arch, setup)
    adapters_save = setup.modules_to_save
    embed_trains = setup.method == "full" or "embed_tokens" in adapters_save
    if embed_trains:  # the embedding's gradient is a scatter by token id
        trace.save(_T("embed.input_ids", 8, False))
    x = _T("embed.out", arch.hidden_size * trace.e, embed_trains)
    if embed_trains and arch.model_type in ("gemma2", "gemma3_text"):  # embeddings * sqrt(h), a 0-dim tensor
        trace.save_bytes("embed.scale", trace.e)
    for layer in range(arch.num_layers):
        key = f"layer{layer}"
        if setup.gradient_checkpointing == "full":  # torch.utils.checkpoint keeps the layer's input only
            trace.save(_T(key + ".input", x.bytes_per_token, True))
            x = _T(key + ".out", x.bytes_per_token, True)
        else:
            x = decoder_layer(trace, x, key)
    head_trains = setup.method == "full" or "lm_head" in adapters_save or (arch.tie_word_embeddings and embed_trains)
    n = trace.rmsnorm(x, "norm", setup.method == "full")
    logits = trace.linear(n, "lm_head", "lm_head", arch.hidden_size, arch.vocab_size, head_trains)
    if arch.logit_softcap and logits.requires_grad:  # Gemma-2: c * tanh(logits / c); tanh keeps its output
        trace.save(_T("lm_head.softcap_tanh", arch.vocab_size * trace.e, True))
    activations = trace.saved
    if setup.objective == "rl" and "norm.out" in activations:  # logits_to_keep: the head's input is a copy of the last c + 1 rows
        activations["norm.out"] = setup.sequences * (setup.completion_len + 1) * arch.hidden_size * trace.e
    loss: dict[str, int] = {}
    if logits.requires_grad:
        tokens = setup.tokens
        if setup.objective == "rl":  # the loss scores the completion's tokens only
            from labkit.memory.rl import rl_loss_bytes

            return activations, rl_loss_bytes(arch, setup)
        if setup.logits == "full" and setup.objective == "preference":
            # labkit.dpo.sequence_logprobs (TRL's loss values): the shifted logits, cast to fp32, go through
            # cross_entropy(reduction="none"): (s - 1) positions a row, and the flattened shifted targets
            scored = setup.sequences * (setup.seq_len - 1)
            loss["log_softmax_fp32"] = scored * arch.vocab_size * 4
            loss["targets_int64"] = scored * 8
            loss["total_weight"] = 4
            return activations, loss
        if setup.logits == "full":
            loss["log_softmax_fp32"] = tokens * arch.vocab_size * 4
            loss["total_weight"] = 4
        else:  # a fused kernel keeps its input and one fp32 log-sum-exp per token, recomputing logits in chunks
            loss["logsumexp_fp32"] = tokens * 4
            if not head_trains:  # (a trained head's input is already among the activations)
                loss["hidden_input"] = tokens * arch.hidden_size * trace.e
        # transformers pads the labels by one and slices them; the slice needs a copy unless b == 1
        loss["targets_int64"] = (tokens if setup.sequences > 1 else setup.seq_len + 1) * 8
    return activations, loss


def layer_activation_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """Bytes one middle decoder layer saves without checkpointing (what checkpointing recomputes)."""
    trace = _Trace(arch, setup)
    decoder_layer(trace, _T("in", arch.hidden_size * trace.e, True), "layer")
    return sum(v for k, v in trace.saved.items() if k != "rope.cos_sin")


def value_activation_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """PPO: what the value model's forward keeps (a full fine-tuning trace of the backbone; its scalar head
    keeps its input, as a trained LM head does). 0 otherwise."""
    if setup.objective != "rl" or setup.algorithm != "ppo":
        return 0
    body = dataclasses.replace(setup, method="full", objective="sft", algorithm=None, num_generations=1, completion_len=0,
                               reward="verifier", reference="none", quantization=None, modules_to_save=(),
                               batch_size=setup.sequences)
    return sum(saved_tensors(arch, body)[0].values())
