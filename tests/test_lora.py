"""labkit's LoRA layer computes exactly what peft's does, before and after merging."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

import labkit
from labkit.lora import LoraLinear, LoraSpec, add_lora

TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def pair():
    """(ours, peft's) on the same base model, with the same non-zero adapter weights."""
    base, _ = labkit.load_base()
    spec = LoraSpec(r=4, lora_alpha=8)
    ours = copy.deepcopy(base)
    replaced = add_lora(ours, TARGETS, spec)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in replaced:
            mine = ours.get_submodule(name)
            peft_layer = theirs.base_model.model.get_submodule(name)
            mine.lora_B.weight.copy_(torch.randn(mine.lora_B.weight.shape, generator=gen) * 0.05)
            peft_layer.lora_A["default"].weight.copy_(mine.lora_A.weight)
            peft_layer.lora_B["default"].weight.copy_(mine.lora_B.weight)
    return ours, theirs, replaced


def test_trainable_parameters_are_exactly_the_adapters(pair):
    ours, theirs, replaced = pair
    mine = {n for n, p in ours.named_parameters() if p.requires_grad}
    peft_names = {n.replace("base_model.model.", "").replace(".default", "") for n, p in theirs.named_parameters() if p.requires_grad}
    assert mine == peft_names and len(mine) == 2 * len(replaced)


def test_outputs_equal_peft_before_and_after_merge(pair):
    ours, theirs, replaced = pair
    ids = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(1))
    base_logits = labkit.load_base()[0](ids).logits
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(input_ids=ids).logits
        assert torch.allclose(a, b, atol=1e-5)
        assert not torch.allclose(a, base_logits, atol=1e-3)  # the adapters do change the output
        for name in replaced:
            mine, peft_layer = ours.get_submodule(name), theirs.base_model.model.get_submodule(name)
            assert torch.allclose(mine.get_delta_weight(), peft_layer.get_delta_weight("default"), atol=1e-7)
        theirs.merge_adapter()
        for name in replaced:
            ours.get_submodule(name).merge()
        merged_a, merged_b = ours(ids).logits, theirs(input_ids=ids).logits
        assert torch.allclose(merged_a, merged_b, atol=1e-5) and torch.allclose(merged_a, a, atol=1e-4)
        for name in replaced:
            assert torch.allclose(ours.get_submodule(name).base_layer.weight,
                                  theirs.base_model.model.get_submodule(name).base_layer.weight, atol=1e-6)
        theirs.unmerge_adapter()
        for name in replaced:
            ours.get_submodule(name).unmerge()
        assert torch.allclose(ours(ids).logits, a, atol=1e-4)


@pytest.mark.parametrize("r, alpha, rslora, expected", [(8, 16, False, 2.0), (16, 16, True, 4.0), (4, 4, False, 1.0)])
def test_scaling(r, alpha, rslora, expected):
    assert LoraSpec(r=r, lora_alpha=alpha, use_rslora=rslora).scaling == expected


def test_a_fresh_adapter_leaves_the_layer_unchanged_and_double_merge_is_refused():
    layer = torch.nn.Linear(8, 6)
    wrapped = LoraLinear(copy.deepcopy(layer), LoraSpec(r=2))
    x = torch.randn(3, 8)
    assert torch.equal(wrapped(x), layer(x))  # B starts at zero
    wrapped.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        wrapped.merge()


@pytest.mark.parametrize("kwargs, error", [(dict(r=0), "r must be >= 1"), (dict(lora_dropout=1.0), "lora_dropout must be in")])
def test_bad_specs_are_rejected(kwargs, error):
    with pytest.raises(ValueError, match=error):
        LoraSpec(**kwargs)


def test_add_lora_reports_missing_targets():
    with pytest.raises(ValueError, match="no nn.Linear named any of"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["q_proj"], LoraSpec())
