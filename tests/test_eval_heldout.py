import math

import pytest
import torch

import labkit
from labkit.corpus import heldout_documents
from labkit.eval import forgetting, heldout_loss, heldout_perplexity, heldout_texts, heldout_window, negative_log_likelihood
from labkit.eval.heldout import CHARS_PER_DOCUMENT, VIRTUAL_TOKEN_ROOM


def test_heldout_texts_keep_every_document_capped():
    documents = heldout_documents()
    for cap in (CHARS_PER_DOCUMENT, 50):
        texts = heldout_texts(cap)
        assert len(texts) == len(documents)
        for text, document in zip(texts, documents):
            assert document.text.startswith(text) and len(text) == min(len(document.text), cap)
    assert heldout_texts(None) == [d.text for d in documents]
    with pytest.raises(ValueError, match="chars_per_document must be >= 1"):
        heldout_texts(0)


@pytest.mark.parametrize("max_seq_len, expected", [(256, 256 - VIRTUAL_TOKEN_ROOM), (128, 128 - VIRTUAL_TOKEN_ROOM),
                                                   (10_000, 256 - VIRTUAL_TOKEN_ROOM)])
def test_the_window_is_the_context_less_the_virtual_token_room(base, max_seq_len, expected):
    model, _ = base
    assert model.config.max_position_embeddings == 256
    assert heldout_window(model, max_seq_len) == expected
    with pytest.raises(ValueError, match="leaves no room"):
        heldout_window(model, VIRTUAL_TOKEN_ROOM)


def test_heldout_loss_is_the_token_mean_nll_in_that_window(base):
    model, tokenizer = base
    texts = heldout_texts(300)[:3]
    total, count = negative_log_likelihood(model, tokenizer, texts, max_length=128 - VIRTUAL_TOKEN_ROOM)
    assert heldout_loss(model, tokenizer, max_seq_len=128, texts=texts) == pytest.approx(total / count)
    with pytest.raises(ValueError, match="every text is empty"):
        heldout_loss(model, tokenizer, max_seq_len=128, texts=[""])


def test_forgetting_is_the_rise_of_the_tuned_loss(base):
    model, tokenizer = base
    texts = heldout_texts(300)[:2]
    base_loss = heldout_loss(model, tokenizer, max_seq_len=256, texts=texts)
    damaged = type(model)(model.config)
    damaged.load_state_dict(model.state_dict())
    with torch.no_grad():
        damaged.model.norm.weight.mul_(0.5)
    tuned_loss = heldout_loss(damaged.eval(), tokenizer, max_seq_len=256, texts=texts)
    assert forgetting(tuned_loss, base_loss) == tuned_loss - base_loss > 0
    assert forgetting(base_loss, base_loss) == 0


@pytest.mark.slow
def test_heldout_perplexity_matches_the_build_record(base):
    model, tokenizer = base
    assert heldout_perplexity(model, tokenizer) == pytest.approx(labkit.build_record()["heldout_perplexity"], rel=1e-3)
    full = heldout_loss(model, tokenizer, max_seq_len=256, texts=heldout_texts(None))
    assert heldout_perplexity(model, tokenizer) == pytest.approx(math.exp(full))
