"""Bytes of the state a training run holds for its whole life: weights, quantization constants,
trainable copies, gradients and optimizer moments."""

from __future__ import annotations

import math

from labkit.memory.architectures import Architecture
from labkit.memory.setup import TrainingSetup, make_setup

NF4_BLOCK = 64
"""Weights per absmax scale in NF4 (Dettmers et al. 2023, QLoRA §3: block size 64)."""
DQ_BLOCK = 256
"""Absmax scales per second-level fp32 constant in double quantization (QLoRA §3: block size 256)."""
ADAM8_BLOCK = 256
"""Values per fp32 absmax in block-wise 8-bit optimizer states (Dettmers et al. 2021, §2)."""
ADAM8_MIN_SIZE = 4096
"""bitsandbytes keeps 32-bit states for tensors smaller than this (``min_8bit_size``)."""


def nf4_bytes(numel: int, double_quant: bool) -> tuple[int, int]:
    """(packed weight bytes, constant bytes) of one NF4 tensor as bitsandbytes stores it.

    Two 4-bit codes per byte; one absmax per 64 weights, fp32 (32/64 = 0.5 bit/weight) or, double
    quantized, uint8 plus one fp32 per 256 absmaxes and an fp32 offset (8/64 + 32/(64*256) = 0.127
    bit/weight: the QLoRA paper's 4.127 bits). Per tensor, the 16-entry NF4 code and, with double
    quantization, the 256-entry fp32 code of the 8-bit absmaxes are stored too.
    """
    blocks = math.ceil(numel / NF4_BLOCK)
    data = math.ceil(numel / 2)
    if not double_quant:
        return data, blocks * 4 + 16 * 4
    return data, blocks + math.ceil(blocks / DQ_BLOCK) * 4 + 4 + 256 * 4 + 16 * 4


def parameter_tensors(arch: Architecture, setup: TrainingSetup) -> tuple[list[tuple[str, int, bool]], list[int]]:
    """``(frozen-or-full parameters as (name, numel, quantizable), trainable numels)``.

    Full fine-tuning trains the first list; adapter methods freeze it and train the second: per
    adapted linear ``lora_A`` (r x in) and ``lora_B`` (out x r), DoRA's magnitude vector (out), and a
    copy of each ``modules_to_save`` module.
    """
    h = arch.hidden_size
    base: list[tuple[str, int, bool]] = [("embed_tokens", arch.vocab_size * h, False)]
    trainable: list[int] = []
    for layer in range(arch.num_layers):
        for name, (in_f, out_f) in arch.linear_shapes().items():
            base.append((f"{layer}.{name}", in_f * out_f, True))
            if arch.attention_bias and name in ("q_proj", "k_proj", "v_proj"):
                base.append((f"{layer}.{name}.bias", out_f, False))
            if setup.adapters and name in setup.target_modules:
                trainable += [setup.r * in_f, out_f * setup.r] + ([out_f] if setup.method == "dora" else [])
        base += [(f"{layer}.{name}", numel, False) for name, numel in arch.norm_parameters().items()]
        # experts are 3-D parameters, not nn.Linear: bitsandbytes leaves them unquantized and LoRA's
        # target_modules do not reach them
        base += [(f"{layer}.{name}", numel, False) for name, numel in arch.expert_parameters().items()]
    base.append(("norm", h, False))
    if not arch.tie_word_embeddings:
        base.append(("lm_head", arch.vocab_size * h, False))
    if setup.adapters:
        trainable += [arch.vocab_size * h for _ in setup.modules_to_save]
    return base, trainable


def adam8_bytes(numels: list[int]) -> int:
    """State bytes of bitsandbytes' block-wise 8-bit AdamW (Dettmers et al. 2021) over tensors of ``numels``.

    Two uint8 moments per value plus one fp32 absmax per 256 values (2 + 8/256 bytes per weight); tensors
    under 4096 values keep fp32 moments (8 bytes per weight); one pair of 256-entry fp32 quantile maps
    is shared by all tensors.
    """
    small = [n for n in numels if n < ADAM8_MIN_SIZE]
    large = [n for n in numels if n >= ADAM8_MIN_SIZE]
    maps = 2 * 256 * 4 if large else 0
    return sum(8 * n for n in small) + sum(2 * (n + math.ceil(n / ADAM8_BLOCK) * 4) for n in large) + maps


def state_bytes(arch: Architecture, setup: TrainingSetup) -> dict[str, int]:
    """weights, quant_constants, trainable_weights, gradients and optimizer_states in bytes."""
    e = setup.compute_bytes
    w = 4 if setup.precision == "fp32" else 2  # bytes per stored weight
    base, trainable = parameter_tensors(arch, setup)
    out = {"weights": 0, "quant_constants": 0, "trainable_weights": 0}
    if setup.method == "full":
        trainable = [n for _, n, _ in base]
        out["weights"] = sum(trainable) * w
    else:
        for _, numel, quantizable in base:
            if quantizable and setup.quantization in ("nf4", "nf4-dq"):
                data, const = nf4_bytes(numel, setup.quantization == "nf4-dq")
            elif quantizable and setup.quantization == "int8":
                data, const = numel, 0  # the per-row scales are added below, once per linear
            else:
                data, const = numel * e, 0
            out["weights"] += data
            out["quant_constants"] += const
        if setup.quantization == "int8":  # LLM.int8 (Dettmers et al. 2022): one fp32 scale per output row
            out["quant_constants"] += arch.num_layers * sum(o for _, o in arch.linear_shapes().values()) * 4
        out["trainable_weights"] = sum(trainable) * w
    master = setup.precision in ("bf16-mixed", "fp16-mixed")
    if master:  # the optimizer updates an fp32 copy (Micikevicius et al. 2018)
        out["trainable_weights"] += sum(trainable) * 4
    state_width = 4 if master or setup.precision == "fp32" else w
    out["gradients"] = sum(trainable) * state_width  # bf16-mixed: gradients are moved onto the fp32 master copy
    if setup.optimizer in ("adamw_torch", "paged_adamw_32bit"):  # exp_avg, exp_avg_sq in the parameter's dtype; fp32 step
        out["optimizer_states"] = sum(2 * n * state_width + 4 for n in trainable)
    elif setup.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        out["optimizer_states"] = adam8_bytes(trainable)
    else:  # plain SGD keeps no state
        out["optimizer_states"] = 0
    if setup.objective in ("preference", "rl"):
        out["reference"] = reference_bytes(arch, setup)
    if setup.objective == "rl":
        out["value_model"], out["reward_model"] = value_model_bytes(arch, setup), reward_model_bytes(arch, setup)
    return shard(out, setup, master_bytes=sum(trainable) * 4 if master else 0)


def reference_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """Bytes the reference model of preference or RL training holds through a step (see ``TrainingSetup.reference``).

    ``model`` with full fine-tuning: a frozen copy of every weight in the training weights' dtype (TRL
    1.16 loads it with the policy's dtype); with an adapter method: nothing, the policy with its adapter
    disabled is the reference. ``precomputed``: one fp32 log-probability per sequence of the batch.
    """
    if setup.reference == "model" and setup.method == "full":
        return arch.num_parameters() * (4 if setup.precision == "fp32" else 2)
    if setup.reference == "precomputed":
        return setup.sequences * 4
    return 0


def shard(terms: dict[str, int], setup: TrainingSetup, *, master_bytes: int = 0) -> dict[str, int]:
    """Per-device bytes of ``terms`` under ``setup.sharding`` over ``setup.world_size`` devices, and offload.

    ZeRO's stages (Rajbhandari et al. 2020): stage 1 splits the optimizer states and the fp32 master
    weights (``master_bytes`` of ``trainable_weights``), stage 2 also the gradients, stage 3 also the
    weights themselves; each device keeps 1/N, rounded up. ``offload_optimizer`` moves the optimizer
    states and masters off the device altogether.
    """
    n = setup.world_size
    split = lambda b: -(-b // n)  # ceil
    stage = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3}[setup.sharding]
    out = dict(terms)
    masters, adapters = master_bytes, terms["trainable_weights"] - master_bytes
    if stage >= 1:
        out["optimizer_states"], masters = split(terms["optimizer_states"]), split(master_bytes)
    if stage >= 2:
        out["gradients"] = split(terms["gradients"])
    if stage >= 3:
        out["weights"], out["quant_constants"], adapters = split(terms["weights"]), split(terms["quant_constants"]), split(adapters)
        if "reference" in terms:  # DeepSpeed ZeRO-3 shards the reference model too (TRL's prepare_deepspeed)
            out["reference"] = split(terms["reference"])
    if setup.offload_optimizer:
        out["optimizer_states"], masters = 0, 0
    out["trainable_weights"] = adapters + masters
    return out


def _weight_bytes(setup: TrainingSetup) -> int:
    return 4 if setup.precision == "fp32" else 2


def backbone_tensors(arch: Architecture) -> list[int]:
    """Numels of a model's tensors without its LM head (embedding, layers, final norm): a value or reward model's body."""
    base, _ = parameter_tensors(arch, make_setup("full"))
    return [n for name, n, _ in base if name != "lm_head"]


def value_model_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """PPO's value model as ``labkit.ppo.ValueModel`` trains it: the backbone and a scalar head (weight and bias),
    every weight trained, with its gradients, fp32 masters (mixed precision) and optimizer moments. 0 otherwise."""
    if setup.objective != "rl" or setup.algorithm != "ppo":
        return 0
    numels = backbone_tensors(arch) + [arch.hidden_size, 1]
    total = sum(numels)
    master = setup.precision.endswith("-mixed")
    width = 4 if master or setup.precision == "fp32" else 2
    weights = total * _weight_bytes(setup) + (total * 4 if master else 0)
    if setup.optimizer in ("adamw_torch", "paged_adamw_32bit"):
        states = sum(2 * n * width + 4 for n in numels)
    elif setup.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        states = adam8_bytes(numels)
    else:
        states = 0
    return weights + total * width + states


def reward_model_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """A learned reward model (``reward='model'``): the backbone and a scalar head without bias, frozen, in the
    training weights' dtype. A verifier costs nothing."""
    if setup.objective != "rl" or setup.reward != "model":
        return 0
    return (sum(backbone_tensors(arch)) + arch.hidden_size) * _weight_bytes(setup)
