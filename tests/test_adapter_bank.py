import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from labkit.adapter_bank import BASE, generate_mixed, load_adapters, median_seconds, mixed_batch_gap
from labkit.generation import generate_batch

NAMES = ("e1", "e2")


@pytest.fixture(scope="module")
def folders(base, tmp_path_factory):
    """Two saved random (trained-looking) LoRA adapters of the shipped model."""
    out = {}
    generator = torch.Generator().manual_seed(0)
    for name in NAMES:
        model = get_peft_model(copy.deepcopy(base[0]), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                   lora_dropout=0.0))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        out[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(out[name])
    return out


@pytest.fixture(scope="module")
def bank(base, folders):
    return load_adapters(copy.deepcopy(base[0]), folders)


def test_load_adapters_holds_each_and_starts_on_the_first(bank):
    assert set(bank.peft_config) == set(NAMES)
    assert bank.active_adapter == "e1"


@torch.no_grad()
def test_mixed_batch_equals_each_adapter_alone(bank, tokenizer):
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # as generation pads
    try:
        batch = tokenizer(["def read(path):", "import os, sys\nx =", "class A:", "print("], return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    names = ["e1", "e2", BASE, "e2"]
    assert mixed_batch_gap(bank, batch["input_ids"], batch["attention_mask"], names) < 1e-4
    bank.set_adapter("e2")
    differs = bank(**batch).logits
    bank.set_adapter("e1")
    assert (differs - bank(**batch).logits).abs().max() > 1e-2  # the adapters really differ
    assert bank.active_adapter == "e1"


def test_generate_mixed_matches_each_adapter_alone(bank, tokenizer):
    prompts = ["def read(path):", "import os", "class A:"]
    names = ["e2", "e1", "e2"]
    mixed = generate_mixed(bank, tokenizer, prompts, names, max_new_tokens=4)
    kwargs = dict(max_new_tokens=4, do_sample=False, repetition_penalty=1.0, temperature=None, top_k=None, top_p=None)
    for name in NAMES:
        bank.set_adapter(name)
        rows = [i for i, n in enumerate(names) if n == name]
        alone = generate_batch(bank, tokenizer, [prompts[i] for i in rows], **kwargs)
        assert [mixed[i] for i in rows] == [a.strip().split("\n", 1)[0].strip() for a in alone]
    bank.set_adapter("e1")
    with pytest.raises(ValueError, match="not in the model"):
        generate_mixed(bank, tokenizer, prompts, ["e1", "nope", "e1"], max_new_tokens=2)


def test_median_seconds_counts_calls():
    calls = []
    assert median_seconds(lambda: calls.append(1), repeats=3) >= 0
    assert len(calls) == 4
    with pytest.raises(ValueError, match="repeats"):
        median_seconds(lambda: None, repeats=0)
