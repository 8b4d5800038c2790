import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from labkit.merging import cat_factors, cross_term_share, delta_weights, linear_factors, lora_layers, merge_adapters

EXPERTS = ("e1", "e2", "e3")


def _experts(model, ranks=(4, 4, 4)):
    """A peft model holding three random (trained-looking) LoRA adapters on q_proj and v_proj."""
    peft_model = None
    generator = torch.Generator().manual_seed(0)
    for name, r in zip(EXPERTS, ranks):
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        if peft_model is None:
            peft_model = get_peft_model(copy.deepcopy(model), config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
    with torch.no_grad():
        for layer in lora_layers(peft_model).values():
            for name in EXPERTS:
                layer.lora_B[name].weight.copy_(torch.randn(layer.lora_B[name].weight.shape, generator=generator) * 0.05)
    return peft_model.eval()


@pytest.fixture(scope="module")
def experts(base):
    return _experts(base[0])


@pytest.mark.parametrize("case, combination_type, weights", [
    (0, "cat", [1.0, 1.0, 1.0]), (1, "cat", [0.5, -0.25, 1.5]),
    (2, "linear", [1 / 3, 1 / 3, 1 / 3]), (3, "linear", [0.5, -0.25, 1.5]),
])
def test_merge_equals_peft_add_weighted_adapter(experts, case, combination_type, weights):
    ours = merge_adapters(experts, list(EXPERTS), weights, f"ours{case}", combination_type=combination_type)
    theirs = f"peft{case}"
    experts.add_weighted_adapter(list(EXPERTS), weights, theirs, combination_type=combination_type)
    assert experts.peft_config[ours].r == experts.peft_config[theirs].r == (12 if combination_type == "cat" else 4)
    for layer in lora_layers(experts).values():
        torch.testing.assert_close(layer.lora_A[ours].weight, layer.lora_A[theirs].weight, rtol=0, atol=1e-7)
        torch.testing.assert_close(layer.lora_B[ours].weight, layer.lora_B[theirs].weight, rtol=0, atol=1e-7)
        assert layer.scaling[ours] == layer.scaling[theirs] == 1.0


def test_cat_is_task_arithmetic_and_linear_is_not(experts):
    weights = [0.5, 1.0, 0.25]
    merge_adapters(experts, list(EXPERTS), weights, "sum_cat", combination_type="cat")
    merge_adapters(experts, list(EXPERTS), weights, "sum_linear", combination_type="linear")
    assert cross_term_share(experts, list(EXPERTS), weights, "sum_cat") < 1e-5
    assert cross_term_share(experts, list(EXPERTS), weights, "sum_linear") > 0.1  # independent A's: cross terms
    layer_name, delta = next(iter(delta_weights(experts, "sum_cat").items()))
    expected = sum(w * delta_weights(experts, a)[layer_name] for a, w in zip(EXPERTS, weights))
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)


def test_factor_functions_on_hand_made_tensors():
    A1, B1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0], [0.0]])  # r = 1, in = out = 2
    A2, B2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0], [3.0]])
    a, b = cat_factors([(A1, B1, 1.0), (A2, B2, 2.0)], [1.0, 0.5])
    torch.testing.assert_close(b @ a, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # 1 * B1 A1 + 0.5 * 2 * B2 A2
    a, b = linear_factors([(A1, B1, 1.0), (A2, B2, 1.0)], [1.0, 1.0])
    torch.testing.assert_close(b @ a, torch.tensor([[2.0, 2.0], [3.0, 3.0]]))  # (B1 + B2)(A1 + A2): cross terms


@pytest.mark.parametrize("combination_type", ["ties", "dare_ties"])
def test_peft_merges_keep_about_density_of_each_update(experts, combination_type):
    torch.manual_seed(0)
    name = merge_adapters(experts, list(EXPERTS), [1.0, 1.0, 1.0], f"m_{combination_type}", combination_type=combination_type,
                          density=0.5)
    layer = next(iter(lora_layers(experts).values()))
    share_nonzero = (layer.lora_B[name].weight != 0).float().mean().item()
    assert 0.4 < share_nonzero < 0.95  # each B pruned to half; the union of three halves


@pytest.mark.parametrize("kwargs, message", [
    (dict(combination_type="nope"), "combination_type"),
    (dict(combination_type="ties"), "density"),
    (dict(combination_type="dare_ties", density=1.5), "density"),
])
def test_merge_rejects_bad_arguments(experts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        merge_adapters(experts, list(EXPERTS), [1.0, 1.0, 1.0], "bad", **kwargs)


def test_merge_rejects_unknown_adapter_and_unequal_linear_ranks(base):
    model = _experts(base[0], ranks=(2, 4, 4))
    with pytest.raises(ValueError, match="not in the model"):
        merge_adapters(model, ["e1", "zzz"], [1.0, 1.0], "m")
    with pytest.raises(ValueError, match="equal ranks"):
        merge_adapters(model, list(EXPERTS), [1.0, 1.0, 1.0], "m", combination_type="linear")
    assert model.peft_config[merge_adapters(model, list(EXPERTS), [1.0, 1.0, 1.0], "m2")].r == 10
