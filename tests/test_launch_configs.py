"""labkit.launch_configs: every generated file is read by the library that will launch from it."""

import json

import pytest

from labkit.launch_configs import accelerate_config, deepspeed_config, launch_commands, write_configs


def accelerate_launch_env(config_file, monkeypatch) -> dict:
    """What ``accelerate launch --config_file config_file train.py`` would put in each process's environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    return env


@pytest.mark.parametrize("sharding, offload", [("zero3", False), ("zero3", True), ("zero2", False)])
def test_accelerates_launcher_and_fsdp_plugin_read_the_fsdp_config(tmp_path, monkeypatch, sharding, offload):
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy

    config = accelerate_config(engine="fsdp", processes_per_machine=8, machines=2, sharding=sharding, offload=offload)
    env = accelerate_launch_env(write_configs(tmp_path, accelerate=config)["accelerate"], monkeypatch)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is (sharding == "zero3")
    assert isinstance(plugin.cpu_offload, CPUOffloadPolicy) is offload
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]


def test_accelerates_launcher_reads_the_data_parallel_config(tmp_path, monkeypatch):
    config = accelerate_config(engine="ddp", processes_per_machine=4, precision="fp16-mixed")
    env = accelerate_launch_env(write_configs(tmp_path, accelerate=config)["accelerate"], monkeypatch)
    assert env["ACCELERATE_MIXED_PRECISION"] == "fp16" and "ACCELERATE_USE_FSDP" not in env


@pytest.mark.parametrize("stage, offload_optimizer, offload_params", [(1, False, False), (2, True, False), (3, True, True)])
def test_deepspeeds_parser_reads_the_zero_config(tmp_path, stage, offload_optimizer, offload_params):
    from deepspeed.runtime.config import DeepSpeedConfig  # the test extra installs it; users need it only for DeepSpeed runs

    written = deepspeed_config(stage=stage, micro_batch_size=2, accumulation=4, offload_optimizer=offload_optimizer,
                               offload_params=offload_params)
    paths = write_configs(tmp_path, accelerate=accelerate_config(engine="deepspeed", processes_per_machine=8,
                                                                  deepspeed_config_file=str(tmp_path / "deepspeed.json")),
                          deepspeed=written)
    parsed = DeepSpeedConfig(json.loads(paths["deepspeed"].read_text()))
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_micro_batch_size_per_gpu == 2 and parsed.gradient_accumulation_steps == 4
    assert parsed.bfloat16_config.enabled and not parsed.float16_config.enabled
    assert (parsed.zero_config.offload_optimizer is not None) is offload_optimizer
    assert (parsed.zero_config.offload_param is not None) is offload_params


def test_a_deepspeed_accelerate_config_points_at_its_json(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    paths = write_configs(tmp_path, accelerate=accelerate_config(engine="deepspeed", processes_per_machine=8,
                                                                  deepspeed_config_file="ds.json"),
                          deepspeed=deepspeed_config(stage=2, micro_batch_size=1))
    loaded = load_config_from_file(str(paths["accelerate"]))
    assert loaded.distributed_type.value == "DEEPSPEED" and loaded.deepspeed_config["deepspeed_config_file"] == "ds.json"


def test_one_launch_command_per_machine_with_its_rank():
    commands = launch_commands("acc.yaml", "train.py", machines=3)
    assert commands == [f"accelerate launch --config_file acc.yaml --machine_rank {r} train.py" for r in range(3)]
    assert launch_commands("acc.yaml", "train.py") == ["accelerate launch --config_file acc.yaml train.py"]


@pytest.mark.parametrize("make, message", [
    (lambda: deepspeed_config(stage=4, micro_batch_size=1), "stage must be 1, 2 or 3"),
    (lambda: deepspeed_config(stage=2, micro_batch_size=1, offload_params=True), "offload_params needs stage 3"),
    (lambda: deepspeed_config(stage=2, micro_batch_size=0), "micro_batch_size must be an integer >= 1"),
    (lambda: deepspeed_config(stage=2, micro_batch_size=1, precision="bf16"), "precision 'bf16' is not launchable"),
    (lambda: accelerate_config(engine="megatron", processes_per_machine=8), "engine must be one of"),
    (lambda: accelerate_config(engine="fsdp", processes_per_machine=8, sharding="zero1"), "FSDP shards as zero2"),
    (lambda: accelerate_config(engine="deepspeed", processes_per_machine=8), "needs deepspeed_config_file"),
    (lambda: launch_commands("a.yaml", "t.py", machines=0), "machines must be >= 1"),
])
def test_bad_choices_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
