import dataclasses

import pytest
import torch

import labkit
from labkit.profiles import PROFILES, Profile, get_profile


def test_auto_picks_cpu_tiny_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_profile().name == "cpu-tiny"
    assert get_profile(None).embedded


def test_auto_picks_gpu_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    profile = get_profile()
    assert (profile.name, profile.device, profile.dtype) == ("gpu", "cuda", "bfloat16")
    assert not profile.embedded


def test_gpu_without_bf16_falls_back_to_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert get_profile("gpu").dtype == "float16"


def test_gpu_profile_refuses_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        get_profile("gpu")


def test_overrides_replace_fields_and_none_is_ignored():
    profile = get_profile("cpu-tiny", train_steps=7, model_id=None)
    assert profile.train_steps == 7
    assert profile.model_id is None
    assert profile.batch_size == PROFILES["cpu-tiny"].batch_size


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: get_profile("tpu"), "unknown profile 'tpu'"),
        (lambda: get_profile("cpu-tiny", steps=3), r"unknown profile field\(s\) \['steps'\]"),
        (lambda: get_profile("cpu-tiny", train_steps=0), "train_steps must be >= 1"),
        (lambda: Profile("x", None, "tpu", "float32", 1, 1, 1, 1), "device must be"),
        (lambda: Profile("x", None, "cpu", "int8", 1, 1, 1, 1), "dtype must be"),
    ],
)
def test_bad_profiles_are_rejected(call, error):
    with pytest.raises(ValueError, match=error):
        call()


def test_cpu_profile_loads_the_embedded_model_in_fp32():
    model, tokenizer = labkit.load_model(get_profile("cpu-tiny"))
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer) == 4096


def test_the_gpu_profile_differs_from_cpu_tiny_only_in_model_device_and_larger_sizes():
    cpu, gpu = PROFILES["cpu-tiny"], PROFILES["gpu"]
    sizes = [f.name for f in dataclasses.fields(Profile) if f.type in (int, "int")]
    assert "train_steps" in sizes and "max_seq_len" in sizes
    differing = {f.name for f in dataclasses.fields(Profile) if getattr(cpu, f.name) != getattr(gpu, f.name)}
    assert differing - set(sizes) == {"name", "model_id", "device", "dtype"}
    assert {f: getattr(gpu, f) >= getattr(cpu, f) for f in sizes} == dict.fromkeys(sizes, True)
    assert gpu.train_steps > cpu.train_steps and gpu.eval_examples > cpu.eval_examples
