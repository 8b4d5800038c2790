"""labkit.hubstyle and the gpu-rehearsal profile: a hub-style model and tokenizer, built offline."""

import dataclasses
import json

import pytest
import torch

import labkit
from labkit.hubstyle import CHAT_TEMPLATE, HUB_STYLE_ID, SHAPE, build_hub_style
from labkit.profiles import get_profile, model_path
from labkit.tokenizer import EOS, IM_END, PAD, has_generation_markers


@pytest.fixture(scope="module")
def rehearsal():
    profile = get_profile("gpu-rehearsal")
    model, tokenizer = labkit.load_model(profile)
    return profile, model, tokenizer


def test_the_model_is_a_qwen2_of_the_recorded_shape_stored_in_bf16(rehearsal):
    profile, model, _ = rehearsal
    path = model_path(profile)
    config = json.loads((path / "config.json").read_text())
    assert profile.model_id == HUB_STYLE_ID and not profile.embedded
    assert config["model_type"] == "qwen2" and config["dtype"] == "bfloat16"
    assert {k: config[k] for k in SHAPE if k != "rope_theta"} == {k: v for k, v in SHAPE.items() if k != "rope_theta"}
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's biased projections, unlike labkit's Llama


def test_the_tokenizer_differs_from_labkits_where_hub_tokenizers_do(rehearsal):
    _, base_tokenizer = labkit.load_base()
    _, _, tokenizer = rehearsal
    assert base_tokenizer.eos_token == EOS and base_tokenizer.pad_token == PAD
    assert tokenizer.eos_token == IM_END != base_tokenizer.eos_token
    assert tokenizer.pad_token == EOS not in (PAD, tokenizer.eos_token)
    assert tokenizer.chat_template == CHAT_TEMPLATE and not has_generation_markers(tokenizer.chat_template)
    assert has_generation_markers(base_tokenizer.chat_template)


def test_the_rehearsal_trains_mixed_precision_over_fp32_weights(rehearsal):
    profile, model, _ = rehearsal
    assert (profile.device, profile.dtype, profile.precision) == ("cpu", "bfloat16", "bf16-mixed")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_building_again_reuses_the_folder(tmp_path):
    first = build_hub_style(tmp_path / "m")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert build_hub_style(tmp_path / "m") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no building folder left behind


def test_the_full_shape_is_qwen2_5_0_5b_as_the_memory_registry_records_it():
    from transformers import Qwen2Config

    from labkit.hubstyle import FULL_SHAPE
    from labkit.memory import resolve

    got = resolve(Qwen2Config(**FULL_SHAPE))
    assert dataclasses.replace(got, name="Qwen2.5-0.5B") == resolve("Qwen2.5-0.5B")


def test_the_gpu_check_profile_is_the_gpu_profile_with_only_sizes_and_the_model_changed():
    from labkit.hubstyle import HUB_STYLE_FULL_ID
    from labkit.profiles import PROFILES

    gpu, check = dataclasses.asdict(PROFILES["gpu"]), dataclasses.asdict(PROFILES["gpu-check"])
    changed = {k for k in gpu if gpu[k] != check[k]}
    assert changed == {"name", "model_id", "train_steps", "eval_examples", "train_examples"}
    assert check["model_id"] == HUB_STYLE_FULL_ID and check["train_steps"] < gpu["train_steps"]


def test_an_unknown_hub_style_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown hub-style model"):
        build_hub_style(tmp_path / "m", model_id="labkit/none")


def test_ids_beyond_the_tokenizer_decode_to_nothing_not_an_error(rehearsal):
    # The full-shape model has 151,936 embedding rows for about 4,100 tokens: random weights can emit
    # an id the tokenizer lacks, as Qwen's own padded rows can.
    _, _, tokenizer = rehearsal
    assert tokenizer.decode([150_000]) == ""
    assert tokenizer.decode(tokenizer("def f").input_ids + [150_000]) == "def f"
