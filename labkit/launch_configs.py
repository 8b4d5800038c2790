"""The files a multi-GPU run is launched with: accelerate configs and DeepSpeed JSON, generated from one choice.

``labkit.memory.smallest_fit`` names a strategy (``labkit.memory.STRATEGIES``); this module writes what
``accelerate launch`` needs to run it: an accelerate config (YAML) for data parallel or FSDP, or one that
points at a DeepSpeed ZeRO config (JSON), and the command to start on every machine. The tests load each
file with the library that will read it (accelerate's config loader and FSDP plugin, DeepSpeed's config parser).
"""

from __future__ import annotations

import json
from pathlib import Path

ENGINES = ("ddp", "fsdp", "deepspeed")
PRECISIONS = {"fp32": "no", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}
"""labkit's training precisions and accelerate's ``mixed_precision`` names for them."""


def deepspeed_config(*, stage: int, micro_batch_size: int, accumulation: int = 1, precision: str = "bf16-mixed",
                     offload_optimizer: bool = False, offload_params: bool = False, gradient_clipping: float = 1.0) -> dict:
    """A DeepSpeed config for ZeRO ``stage`` (1-3), optionally offloading the optimizer (and, at stage 3, the weights).

    The global batch is left to DeepSpeed to derive (micro-batch x accumulation x processes), so the same
    file serves any number of GPUs.
    """
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
    if offload_params and stage != 3:
        raise ValueError(f"offload_params needs stage 3 (only stage 3 partitions the weights), got stage {stage}")
    _check_precision(precision)
    for name, value in (("micro_batch_size", micro_batch_size), ("accumulation", accumulation)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # save an ordinary checkpoint, not only shards
    return {"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": accumulation,
            "gradient_clipping": gradient_clipping, "bf16": {"enabled": precision == "bf16-mixed"},
            "fp16": {"enabled": precision == "fp16-mixed"}, "zero_optimization": zero}


def accelerate_config(*, engine: str, processes_per_machine: int, machines: int = 1, precision: str = "bf16-mixed",
                      sharding: str = "zero3", offload: bool = False, layer_class: str = "LlamaDecoderLayer",
                      deepspeed_config_file: str | None = None, main_process_ip: str = "MAIN_NODE_IP",
                      main_process_port: int = 29500) -> dict:
    """An accelerate config (what ``accelerate config`` would write) for ``engine``: ``ddp``, ``fsdp`` or ``deepspeed``.

    ``fsdp``: FSDP2 wrapping each ``layer_class`` (the model's decoder layer), ``sharding`` ``zero3`` (FULL_SHARD:
    reshard after forward) or ``zero2`` (SHARD_GRAD_OP), ``offload`` moving weights and optimizer to the CPU;
    sharded checkpoints. ``deepspeed``: points at ``deepspeed_config_file``. Machine-specific values
    (``machine_rank``, ``main_process_ip``) are overridden on each machine's command line.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    _check_precision(precision)
    if processes_per_machine < 1 or machines < 1:
        raise ValueError(f"processes_per_machine and machines must be >= 1; got {processes_per_machine}, {machines}")
    config = {"compute_environment": "LOCAL_MACHINE", "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "FSDP",
                                                                          "deepspeed": "DEEPSPEED"}[engine],
              "mixed_precision": PRECISIONS[precision], "num_machines": machines,
              "num_processes": processes_per_machine * machines, "machine_rank": 0, "main_training_function": "main",
              "rdzv_backend": "static", "same_network": True, "use_cpu": False}
    if machines > 1:
        config.update(main_process_ip=main_process_ip, main_process_port=main_process_port)
    if engine == "fsdp":
        if sharding not in ("zero2", "zero3"):
            raise ValueError(f"FSDP shards as zero2 (SHARD_GRAD_OP) or zero3 (FULL_SHARD); got sharding {sharding!r}")
        config["fsdp_config"] = {"fsdp_version": 2, "fsdp_reshard_after_forward": sharding == "zero3",
                                 "fsdp_offload_params": offload, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                 "fsdp_transformer_layer_cls_to_wrap": layer_class,
                                 "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_cpu_ram_efficient_loading": True,
                                 "fsdp_activation_checkpointing": False}
    if engine == "deepspeed":
        if not deepspeed_config_file:
            raise ValueError("engine 'deepspeed' needs deepspeed_config_file (write one with deepspeed_config)")
        config["deepspeed_config"] = {"deepspeed_config_file": deepspeed_config_file, "zero3_init_flag": True}
    return config


def write_configs(folder: str | Path, *, accelerate: dict, deepspeed: dict | None = None) -> dict[str, Path]:
    """Write ``accelerate.yaml`` (and ``deepspeed.json``) into ``folder``; their paths by name."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"accelerate": folder / "accelerate.yaml"}
    paths["accelerate"].write_text(yaml.safe_dump(accelerate, sort_keys=False))
    if deepspeed is not None:
        paths["deepspeed"] = folder / "deepspeed.json"
        paths["deepspeed"].write_text(json.dumps(deepspeed, indent=2) + "\n")
    return paths


def launch_commands(config_file: str | Path, script: str, *, machines: int = 1) -> list[str]:
    """The command to run on each machine (rank 0 first): ``accelerate launch`` with that machine's rank."""
    if machines < 1:
        raise ValueError(f"machines must be >= 1, got {machines}")
    if machines == 1:
        return [f"accelerate launch --config_file {config_file} {script}"]
    return [f"accelerate launch --config_file {config_file} --machine_rank {rank} {script}" for rank in range(machines)]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not launchable here; expected one of {', '.join(PRECISIONS)}")
