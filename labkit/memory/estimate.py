"""``estimate_memory``: the memory of one training step, term by term, from an architecture and a setup."""

from __future__ import annotations

from typing import Any

from labkit.memory.activations import layer_activation_bytes, saved_tensors
from labkit.memory.architectures import Architecture, check_setup, resolve
from labkit.memory.report import MemoryReport
from labkit.memory.setup import TrainingSetup, make_setup
from labkit.memory.states import state_bytes

CUDA_OVERHEAD_BYTES = 512 * 2**20
"""CUDA context, cuBLAS workspace and allocator slack: roughly 0.3-1 GiB depending on GPU and driver.
Not tensor memory (``torch.cuda.max_memory_allocated`` does not see it), so it stays out of ``total_bytes``."""


def transient_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """The largest short-lived allocation on top of what is kept (a model of the GPU peak; not measurable on CPU).

    The model's output logits stay referenced (``b*s*V*e``) while the loss's fp32 gradient of the
    log-softmax (``b*s*V*4``) exists in backward; on top of that comes the biggest of: one layer's
    activations recomputed under checkpointing, and a dequantized 16-bit copy of the largest 4-bit
    weight (bitsandbytes dequantizes to compute the input gradient). A preference step with a reference
    model adds the reference's no_grad forward (:func:`reference_forward_bytes`).
    """
    e = setup.compute_bytes
    rows = setup.sequences * (setup.completion_len + 1) if setup.objective == "rl" else setup.tokens  # RL: logits_to_keep
    logits = rows * arch.vocab_size * (e + 4) if setup.logits == "full" else 0
    recompute = layer_activation_bytes(arch, setup) if setup.gradient_checkpointing == "full" else 0
    largest = max(i * o for i, o in arch.linear_shapes().values())
    dequant = largest * e if setup.quantization is not None else 0
    # ZeRO-3 / FSDP FULL_SHARD gathers one layer's full weights before using it (and prefetches the next)
    gathered = 2 * arch.layer_parameters() * (4 if setup.precision == "fp32" else 2) if setup.sharding == "zero3" else 0
    return max(logits + max(recompute, dequant), reference_forward_bytes(arch, setup) + dequant) + gathered


def reference_forward_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """Peak bytes of the reference model's ``no_grad`` forward in a preference step (0 without one).

    Nothing of it is kept, but its logits (``2b*s*V*e``), their shifted fp32 copy and its log-softmax
    (``2b*(s-1)*V*4`` each) coexist for a moment, after the policy's forward: ``b*s*V*4`` more than the
    policy's backward holds for its logits, so the reference's forward can set the step's peak. One
    layer's no_grad working set is left out (small beside ``V``-wide tensors).
    """
    if setup.objective != "preference" or setup.reference != "model" or setup.logits != "full":
        return 0
    return setup.sequences * arch.vocab_size * (setup.seq_len * setup.compute_bytes + (setup.seq_len - 1) * 8)


def estimate_memory(model: Any, *, method: str, device: str = "cuda", **options) -> MemoryReport:
    """Estimated bytes of one training step of ``model`` fine-tuned with ``method``.

    ``model``: a name from :data:`ARCHITECTURES`, a transformers config or model, or a config.json path.
    ``options``: any :class:`~labkit.memory.setup.TrainingSetup` field (batch_size, seq_len, precision,
    quantization, optimizer, r, target_modules, modules_to_save, gradient_checkpointing,
    attn_implementation, logits, world_size, sharding, offload_optimizer, objective, reference, algorithm,
    num_generations, completion_len, reward, attention_groups). ``objective='rl'``: :mod:`labkit.memory.rl`. ``device='cuda'`` adds
    :data:`CUDA_OVERHEAD_BYTES` as overhead. With ``world_size`` > 1 the report is per device.
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device {device!r} is not supported; expected 'cuda' or 'cpu'")
    arch = resolve(model)
    setup = make_setup(method, **{"attn_implementation": arch.default_attention, **options})
    check_setup(arch, setup)
    breakdown = state_bytes(arch, setup)
    activations, loss = saved_tensors(arch, setup)
    breakdown["activations"] = sum(activations.values())
    breakdown["logits"] = sum(loss.values())
    breakdown["transient"] = transient_bytes(arch, setup)
    phases: dict[str, int] = {}
    if setup.objective == "rl":  # sampling, scoring and training follow one another: the largest phase sets the peak
        from labkit.memory.activations import value_activation_bytes
        from labkit.memory.rl import rl_phases

        breakdown["activations"] += value_activation_bytes(arch, setup)
        kept = breakdown["activations"] + breakdown["logits"]
        phases = rl_phases(arch, setup, kept + breakdown["transient"])
        breakdown["transient"] = max(v for k, v in phases.items() if k != "kv_cache") - kept
    return MemoryReport(kind="estimate", model=arch.name, breakdown=breakdown,
                        overhead_bytes=CUDA_OVERHEAD_BYTES if device == "cuda" else 0,
                        notes={"setup": repr(setup)}, phases=phases)
