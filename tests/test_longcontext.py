import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from labkit.longcontext import (S2Config, extend_context, group_masks, group_positions, interpolated_rope, s2_attention,
                                s2_mask, trainable_for_longlora, use_s2_attention)


def qkv(batch=2, heads=4, n=16, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, dim, generator=generator) for _ in range(3)]


def masked_reference(q, k, v, mask):
    """Full attention of every head over an explicit (heads, n, n) boolean mask: (B, n, H, d)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def hand_mask(n, heads, group, wrap):
    """The S² mask written out position by position, independently of labkit's group bookkeeping."""
    mask = torch.zeros(heads, n, n, dtype=torch.bool)
    for h in range(heads):
        shifted = h >= heads // 2
        for i in range(n):
            for j in range(n):
                if not shifted:
                    mask[h, i, j] = i >= j and i // group == j // group
                else:
                    ri, rj = (i - group // 2) % n, (j - group // 2) % n  # places after rolling left by G/2
                    same = ri // group == rj // group
                    mask[h, i, j] = same and (i >= j if wrap == "causal" else ri >= rj)
    return mask


def test_one_group_equals_full_attention():
    q, k, v = qkv()
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    for shift in (True, False):
        out = s2_attention(q, k, v, S2Config(group_fraction=1.0, shift=shift))
        assert torch.allclose(out, full, atol=1e-5)


@pytest.mark.parametrize("n,fraction", [(16, 0.25), (16, 0.5), (24, 0.25), (8, 0.5)])
@pytest.mark.parametrize("wrap", ["causal", "roll"])
def test_matches_hand_built_block_mask(n, fraction, wrap):
    config = S2Config(group_fraction=fraction, wrap=wrap)
    group = config.group_size(n)
    expected_mask = hand_mask(n, 4, group, wrap)
    assert torch.equal(s2_mask(n, 4, config), expected_mask)
    q, k, v = qkv(n=n)
    out = s2_attention(q, k, v, config)
    assert torch.allclose(out, masked_reference(q, k, v, expected_mask), atol=1e-5)
    # the shift matters: the second half of the heads differs from unshifted grouping
    unshifted = s2_attention(q, k, v, S2Config(group_fraction=fraction, shift=False))
    assert torch.allclose(out[:, :, :2], unshifted[:, :, :2], atol=1e-6)
    assert not torch.allclose(out[:, :, 2:], unshifted[:, :, 2:], atol=1e-3)


def test_roll_wrap_lets_first_tokens_see_the_last():
    n, group = 16, 4
    mask = s2_mask(n, 2, S2Config(wrap="roll"))[1]
    assert mask[0, n - 1] and mask[1, n - 2]                 # the official code's wrap: a look into the future
    causal = s2_mask(n, 2, S2Config(wrap="causal"))[1]
    assert not causal[0, n - 1] and causal[n - 1, 0]          # causal wrap: only the past
    assert not torch.triu(causal, diagonal=1).any()
    assert group_positions(n, group, True)[-1].tolist() == [14, 15, 0, 1]


def test_given_padding_mask_is_respected():
    q, k, v = qkv(batch=1, n=16)
    config = S2Config(group_fraction=0.5)
    padding = torch.ones(16, dtype=torch.bool)
    padding[:3] = False                                       # left padding: keys 0..2 are never seen
    model_mask = torch.tril(torch.ones(16, 16, dtype=torch.bool)) & padding[None, :]
    out = s2_attention(q, k, v, config, attention_mask=model_mask[None, None])
    expected = s2_mask(16, 4, config) & padding[None, None, :]
    expected |= torch.eye(16, dtype=torch.bool)               # fully masked padding rows see themselves
    assert torch.allclose(out[:, 3:], masked_reference(q, k, v, expected)[:, 3:], atol=1e-5)
    additive = torch.zeros(16, 16).masked_fill(~model_mask, torch.finfo(torch.float32).min)
    out_additive = s2_attention(q, k, v, config, attention_mask=additive[None, None])
    assert torch.allclose(out, out_additive, atol=1e-6)


def test_shapes_and_gradients_flow():
    q, k, v = (t.requires_grad_() for t in qkv(n=32, dim=4))
    out = s2_attention(q, k, v, S2Config())
    assert out.shape == (2, 32, 4, 4)
    out.square().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.abs().sum() > 0 and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("n,heads,fraction,message", [
    (18, 4, 0.25, "does not split"), (16, 3, 0.25, "even head count"), (12, 4, 0.25, "does not split")])
def test_clear_errors(n, heads, fraction, message):
    q, k, v = qkv(heads=heads, n=n)
    with pytest.raises(ValueError, match=message):
        s2_attention(q, k, v, S2Config(group_fraction=fraction))


@pytest.mark.parametrize("kwargs", [dict(group_fraction=0), dict(group_fraction=1.5), dict(wrap="wrap")])
def test_config_validates(kwargs):
    with pytest.raises(ValueError):
        S2Config(**kwargs)


def test_group_masks_shape():
    assert group_masks(16, 4, True).shape == (4, 4, 4)


def tiny_llama(heads=4, kv_heads=2):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=8 * heads, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=16,
                         rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})
    return LlamaForCausalLM(config)


def test_registered_attention_trains_with_s2_and_evaluates_in_full():
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    model.eval()
    full = model(ids).logits
    use_s2_attention(model, S2Config(group_fraction=0.25))
    assert torch.allclose(model(ids).logits, full, atol=1e-5)  # eval: full attention
    model.train()
    s2 = model(ids, labels=ids)
    assert not torch.allclose(s2.logits, full, atol=1e-3)
    # tokens 0, 1 see the same past as in full attention (shifted heads: the causal wrap); token 2 does not
    assert torch.allclose(s2.logits[:, :2], full[:, :2], atol=1e-5)
    assert not torch.allclose(s2.logits[:, 2], full[:, 2], atol=1e-4)
    s2.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="even number"):
        use_s2_attention(tiny_llama(heads=3, kv_heads=3))


def test_position_interpolation_rescales_rope_positions():
    model = tiny_llama()
    n, factor = 16, 4
    positions = torch.arange(n)[None].float()
    x = torch.zeros(1, dtype=torch.float32)
    cos0, sin0 = model.model.rotary_emb(x, positions)
    scaled = interpolated_rope(model.config, n * factor)
    assert scaled.rope_parameters["rope_type"] == "linear" and scaled.rope_parameters["factor"] == factor
    assert model.config.rope_parameters["rope_type"] == "default"  # a copy: the original is unchanged
    extend_context(model, n * factor)
    assert model.config.max_position_embeddings == n * factor
    cos4, sin4 = model.model.rotary_emb(x, (torch.arange(n * factor) // 1)[None].float())
    # positions 0, 4, 8, ... of the extended model are positions 0, 1, 2, ... of the original
    assert torch.allclose(cos4[0, ::factor], cos0[0], atol=1e-5) and torch.allclose(sin4[0, ::factor], sin0[0], atol=1e-5)
    assert not torch.allclose(cos4[0, :n], cos0[0], atol=1e-3)
    with pytest.raises(ValueError, match="must be >="):
        interpolated_rope(model.config, 8)


def test_trainable_for_longlora_unfreezes_embeddings_and_norms():
    model = tiny_llama()
    for p in model.parameters():
        p.requires_grad_(False)
    added = trainable_for_longlora(model)
    expected = sum(p.numel() for name, p in model.named_parameters() if "embed" in name or "norm" in name)
    assert added == expected > 0
    assert not model.model.layers[0].self_attn.q_proj.weight.requires_grad


@pytest.mark.slow
def test_passkey_retrieval_matches_completion_logprobs_and_greedy(base):
    from datasets import concatenate_datasets

    from labkit import tasks
    from labkit.eval import completion_logprobs
    from labkit.longcontext import passkey_retrieval

    model, tokenizer = base
    data = concatenate_datasets([tasks.passkey(2, seed=0, filler_repeats=2), tasks.passkey(1, seed=1, filler_repeats=5)])
    rows = passkey_retrieval(model, tokenizer, data, batch_size=3)  # right-padded: lengths differ
    expected = completion_logprobs(model, tokenizer, data["prompt"], [" " + a for a in data["answer"]])
    assert [r["key_logprob"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-3)
    for row, prompt, answer in zip(rows, data["prompt"], data["answer"]):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        key = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        greedy = model.generate(ids, max_new_tokens=len(key), do_sample=False)[0, ids.shape[1]:].tolist()
        assert row["retrieved"] == (greedy == key)
