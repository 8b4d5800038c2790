import math
from types import SimpleNamespace

import pytest
import torch

from labkit.eval import bits_per_byte, negative_log_likelihood, perplexity
from labkit.eval.likelihood import _windows


class BigramModel(torch.nn.Module):
    """Logits depend only on the current token: a fixed table, so the NLL is computable by hand."""

    def __init__(self, vocab_size: int, max_positions: int = 64, seed: int = 0):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=torch.Generator().manual_seed(seed)))
        self.config = SimpleNamespace(max_position_embeddings=max_positions)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def by_hand(model, tokenizer, texts):
    """Sum of -log p(token | previous token), the first token predicted from EOS."""
    logp = torch.log_softmax(model.table.detach(), dim=-1)
    total, count = 0.0, 0
    for text in texts:
        ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        total -= sum(logp[a, b].item() for a, b in zip(ids, ids[1:]))
        count += len(ids) - 1
    return total, count


TEXTS = ["def f(x):\n    return x\n" * 6, "short", "The with statement wraps a block. " * 9]


@pytest.mark.parametrize("max_length, stride", [(None, None), (8, 8), (8, 3), (5, 1), (1000, 7)])
def test_nll_matches_hand_computation_for_any_windowing(tokenizer, max_length, stride):
    model = BigramModel(len(tokenizer))
    total, count = negative_log_likelihood(model, tokenizer, TEXTS, max_length=max_length, stride=stride)
    expected_total, expected_count = by_hand(model, tokenizer, TEXTS)
    assert count == expected_count
    assert total == pytest.approx(expected_total, rel=1e-5)


def test_uniform_model_has_perplexity_equal_to_vocab_size(tokenizer):
    model = BigramModel(len(tokenizer))
    model.table.data.zero_()
    assert perplexity(model, tokenizer, TEXTS) == pytest.approx(len(tokenizer), rel=1e-5)


def test_perplexity_is_token_weighted_not_a_mean_over_texts(tokenizer):
    model = BigramModel(len(tokenizer), seed=3)
    total, count = by_hand(model, tokenizer, TEXTS)
    per_text = [math.exp(by_hand(model, tokenizer, [t])[0] / by_hand(model, tokenizer, [t])[1]) for t in TEXTS]
    assert perplexity(model, tokenizer, TEXTS) == pytest.approx(math.exp(total / count), rel=1e-5)
    assert abs(sum(per_text) / len(per_text) - math.exp(total / count)) > 1.0


@pytest.mark.parametrize("n_ids, max_length, stride", [(2, 4, 4), (10, 4, 4), (10, 4, 1), (17, 6, 4), (100, 8, 8)])
def test_windows_score_every_id_once_within_the_context(n_ids, max_length, stride):
    scored = []
    for start, stop, n_new in _windows(n_ids, max_length, stride):
        assert stop - 1 - start <= max_length  # the model never reads more than max_length ids
        assert n_new <= stop - 1 - start
        scored.extend(range(stop - n_new, stop))
    assert scored == list(range(1, n_ids))


@pytest.mark.slow
def test_sliding_window_gives_more_context_and_lower_loss_on_a_real_model(base):
    model, tokenizer = base
    text = [open(__file__.replace("test_eval_likelihood.py", "../labkit/pretrain.py")).read()]
    disjoint = perplexity(model, tokenizer, text, max_length=64)
    sliding = perplexity(model, tokenizer, text, max_length=64, stride=16)
    assert sliding < disjoint


def test_bits_per_byte_is_nll_over_bytes(tokenizer):
    model = BigramModel(len(tokenizer))
    total, _ = by_hand(model, tokenizer, TEXTS)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert bits_per_byte(model, tokenizer, TEXTS) == pytest.approx(total / math.log(2) / n_bytes, rel=1e-5)


def test_bad_inputs_are_rejected(tokenizer):
    model = BigramModel(len(tokenizer))
    with pytest.raises(ValueError, match="stride must be in"):
        perplexity(model, tokenizer, TEXTS, max_length=4, stride=5)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        perplexity(model, tokenizer, ["ok", 3])
    with pytest.raises(ValueError, match="no token was predicted"):
        perplexity(model, tokenizer, [""])


@pytest.mark.parametrize("training", [True, False])
def test_scoring_leaves_the_model_in_the_mode_it_found(base, training):
    model, tokenizer = base
    model.train(training)
    try:
        negative_log_likelihood(model, tokenizer, ["def f(x):\n    return x\n"])
        assert model.training is training
    finally:
        model.eval()
