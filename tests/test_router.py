import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from labkit.merging import lora_layers, merge_adapters
from labkit.router import RouterConfig, SequenceRouter, generate_routed, prompt_features, routed, routing_weights, train_router

EXPERTS = ["e1", "e2", "e3"]


@pytest.fixture(scope="module")
def experts(base):
    """The shipped model with three random (trained-looking) LoRA adapters."""
    model = None
    generator = torch.Generator().manual_seed(0)
    for name in EXPERTS:
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
        model = get_peft_model(copy.deepcopy(base[0]), config, adapter_name=name) if model is None else model
        if name not in model.peft_config:
            model.add_adapter(name, config)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for name in EXPERTS:
                layer.lora_B[name].weight.copy_(torch.randn(layer.lora_B[name].weight.shape, generator=generator) * 0.1)
    model.set_adapter("e1")
    return model.eval()


@pytest.mark.parametrize("batch, length, hidden, n_experts", [(1, 1, 8, 1), (3, 5, 16, 4), (2, 7, 256, 3)])
def test_router_shapes_and_weights_sum_to_one(batch, length, hidden, n_experts):
    router = SequenceRouter(hidden, n_experts)
    torch.nn.init.normal_(router.proj.weight)
    weights = router(torch.randn(batch, length, hidden), torch.ones(batch, length))
    assert weights.shape == (batch, n_experts)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch))
    assert (weights >= 0).all()


def test_router_ignores_tokens_outside_the_mask():
    router = SequenceRouter(4, 2)
    torch.nn.init.normal_(router.proj.weight)
    hidden = torch.randn(1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    changed = hidden.clone()
    changed[:, 3:] = 100.0  # the completion: the router must not see it
    torch.testing.assert_close(router(hidden, mask), router(changed, mask))
    assert not torch.allclose(router(hidden, mask), router(hidden, torch.ones_like(mask)))


@torch.no_grad()
def test_routing_is_per_sequence_equal_to_each_rows_weighted_sum(experts, tokenizer):
    """Each row, at every token, computes W x + Σ g_k ΔW_k x with its own g: the same as the adapters merged by
    task arithmetic with that row's weights (``cat``)."""
    ids = tokenizer(["def read(path):\n    return", "import os, sys\nprint("], return_tensors="pt", padding=True)
    weights = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.25, 0.75]])
    with routed(experts, EXPERTS, weights):
        logits = experts(**ids).logits
    for row, g in enumerate(weights):
        name = merge_adapters(experts, EXPERTS, g.tolist(), f"row{row}", combination_type="cat")
        experts.set_adapter(name)
        expected = experts(**ids).logits[row]
        mask = ids["attention_mask"][row].bool()
        torch.testing.assert_close(logits[row][mask], expected[mask], rtol=1e-4, atol=1e-4)
    experts.set_adapter("e1")
    for name in ("row0", "row1"):
        experts.delete_adapter(name)


@torch.no_grad()
def test_routed_restores_the_active_adapter_and_checks_shapes(experts, tokenizer):
    ids = tokenizer("def f(x):", return_tensors="pt")
    before = experts(**ids).logits
    with routed(experts, EXPERTS, torch.tensor([[0.0, 1.0, 0.0]])):
        pass
    torch.testing.assert_close(experts(**ids).logits, before)
    assert experts.active_adapter == "e1"
    with pytest.raises(ValueError, match="weights must be"):
        with routed(experts, EXPERTS, torch.ones(1, 2)):
            pass


def test_training_moves_only_the_router(experts, tokenizer):
    rows = Dataset.from_dict({"prompt": [f"Give the {k} word.\na, b, c\nAnswer:" for k in ("first", "last", "middle", "next")],
                              "completion": [" a", " c", " b", " a"]})
    frozen = {n: p.detach().clone() for n, p in experts.named_parameters()}
    router, losses = train_router(experts, tokenizer, EXPERTS, rows, RouterConfig(learning_rate=0.1, steps=2, batch_size=2))
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert router.proj.weight.abs().sum() > 0  # it started at zero
    assert all(torch.equal(p, frozen[n]) for n, p in experts.named_parameters())
    assert all(p.grad is None for p in experts.parameters())
    assert not any(p.requires_grad for p in experts.parameters())


@torch.no_grad()
def test_generate_routed_with_a_one_hot_router_equals_that_expert(experts, tokenizer):
    from labkit.generation import generate_batch

    prompts = ["def read(path):\n    return", "import os"]
    router = SequenceRouter(experts.config.hidden_size, 3)
    router.proj.bias.copy_(torch.tensor([-1e4, 1e4, -1e4]))  # every prompt to expert e2
    answers, weights = generate_routed(experts, tokenizer, router, EXPERTS, prompts, max_new_tokens=5)
    assert weights.shape == (2, 3) and torch.allclose(weights[:, 1], torch.ones(2))
    experts.set_adapter("e2")
    alone = generate_batch(experts, tokenizer, prompts, max_new_tokens=5, do_sample=False, repetition_penalty=1.0,
                           temperature=None, top_k=None, top_p=None)
    experts.set_adapter("e1")
    assert answers == [a.strip().split("\n", 1)[0].strip() for a in alone]
    torch.testing.assert_close(routing_weights(experts, tokenizer, router, prompts), weights)
    ids = tokenizer(prompts[:1], return_tensors="pt")
    assert prompt_features(experts, ids["input_ids"], ids["attention_mask"]).shape == (1, ids["input_ids"].shape[1], 256)


def test_router_config_rejects_bad_values():
    with pytest.raises(ValueError, match="learning_rate"):
        RouterConfig(learning_rate=0)
    with pytest.raises(ValueError, match="steps"):
        RouterConfig(steps=0)


def test_sequence_loss_counts_every_sequence_once():
    from labkit.router import sequence_loss

    logits = torch.zeros(2, 4, 5)  # uniform over 5 tokens: every labelled token costs log 5
    logits[0, :, 1] = 10.0  # the first sequence predicts token 1 everywhere
    labels = torch.tensor([[-100, 1, 1, 1], [-100, -100, -100, 2]])  # three right tokens; one uniform token
    per_sequence = torch.tensor([torch.log1p(4 * torch.exp(torch.tensor(-10.0))), torch.log(torch.tensor(5.0))])
    torch.testing.assert_close(sequence_loss(logits, labels), per_sequence.mean())


def test_standardization_removes_the_common_part():
    router = SequenceRouter(3, 2)
    pooled = torch.tensor([[100.0, 1.0, 5.0], [100.0, 3.0, 7.0], [100.0, 2.0, 6.0]])
    router.fit_standardization(pooled)
    torch.testing.assert_close(router.feature_mean, torch.tensor([100.0, 2.0, 6.0]))
    with torch.no_grad():
        router.proj.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]))
    weights = router(pooled.unsqueeze(1), torch.ones(3, 1))
    assert weights[0, 1] > 0.8 and weights[1, 0] > 0.8 and torch.allclose(weights[2], torch.tensor([0.5, 0.5]))
