import pytest
import torch

from labkit.memory import estimate_memory
from labkit.vocabulary import (
    LORA_METHODS,
    MEMORY_METHODS,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    check_choice,
    method_label,
    precision_for,
)


def test_the_method_families_are_subsets_of_one_vocabulary():
    assert set(LORA_METHODS) <= set(MEMORY_METHODS) <= set(METHODS)
    assert set(METHODS) - set(MEMORY_METHODS) == {"prompt", "prefix", "ia3"}
    assert len({method_label(m) for m in METHODS}) == len(METHODS)  # labels tell methods apart


def test_optimizer_names_are_the_ones_transformers_accepts():
    from transformers.training_args import OptimizerNames

    assert set(OPTIMIZERS) <= {o.value for o in OptimizerNames}


@pytest.mark.parametrize("dtype, expected", [(torch.float32, "fp32"), ("bfloat16", "bf16-mixed"),
                                             (torch.float16, "fp16-mixed"), ("torch.bfloat16", "bf16-mixed")])
def test_precision_for_a_weight_dtype_trains_16_bit_weights_mixed(dtype, expected):
    assert precision_for(dtype) == expected in PRECISIONS


def test_bad_names_are_refused_with_what_is_allowed():
    with pytest.raises(ValueError, match=r"dtype 'int8' is not supported; expected one of 'float32'"):
        precision_for(torch.int8)
    with pytest.raises(ValueError, match="method 'adapter' is not supported"):
        method_label("adapter")
    with pytest.raises(ValueError, match=r"optim 'adam' is not supported; expected one of 'adamw_torch'"):
        check_choice("optim", "adam", OPTIMIZERS)


@pytest.mark.parametrize("method", [m for m in MEMORY_METHODS if m not in ("full", "dora", "qlora")])
def test_memory_models_every_lora_shaped_method_as_lora(method):
    assert estimate_memory("Qwen2.5-0.5B", method=method).breakdown == estimate_memory("Qwen2.5-0.5B", method="lora").breakdown


@pytest.mark.parametrize("method", ["prompt", "prefix", "ia3"])
def test_memory_says_which_methods_it_does_not_model(method):
    with pytest.raises(ValueError, match=f"method '{method}' has no memory model"):
        estimate_memory("Qwen2.5-0.5B", method=method)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_memory_accepts_every_optimizer_name(optimizer):
    assert estimate_memory("Qwen2.5-0.5B", method="lora", optimizer=optimizer).total_bytes > 0
