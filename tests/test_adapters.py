import copy
import math

import pytest
import torch
from peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model

from labkit.adapters import adapter_round_trip


def _perturbed(model, config):
    peft_model = get_peft_model(copy.deepcopy(model), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: its update must not be zero
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return peft_model


@pytest.fixture(scope="module")
def ids(base):
    return base[1]("def read(path):\n    return", return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("config, mergeable", [
    (LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0), True),
    (IA3Config(task_type="CAUSAL_LM"), True),
    (PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), False),
])
def test_adapters_reload_and_merge_to_the_trained_logits(base, ids, config, mergeable):
    model = base[0]
    trained = _perturbed(model, config)
    with torch.no_grad():
        assert (trained(input_ids=ids).logits[:, -ids.shape[1]:] - model(input_ids=ids).logits).abs().max() > 1e-3
    result = adapter_round_trip(trained, copy.deepcopy(model), ids)
    trainable_bytes = sum(p.numel() * p.element_size() for p in trained.parameters() if p.requires_grad)
    assert trainable_bytes <= result["saved bytes"] < trainable_bytes + 64 * 1024  # weights plus a small header
    assert result["reload max |Δlogit|"] < 1e-5
    if mergeable:
        assert result["merge max |Δlogit|"] < 1e-4
    else:
        assert math.isnan(result["merge max |Δlogit|"])


def test_a_fully_fine_tuned_model_reports_all_its_weights(base, ids):
    model = base[0]
    result = adapter_round_trip(model, model, ids)
    assert result["saved bytes"] == sum(p.numel() * 4 for p in model.parameters())
