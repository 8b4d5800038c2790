"""labkit.accumulation: accumulated micro-batch gradients equal the large batch's only with token normalisation."""

import pytest
import torch

import labkit
from labkit.accumulation import (accumulated_gradients, batch_gradients, gradient_error, predicted_tokens, split_batch,
                                 summed_token_loss)
from labkit.data import IGNORE_INDEX

TEXTS = ["def f(x):\n    return x", "import os\nprint(os.getcwd())\nprint('done')",
         "a = 1", "for i in range(10):\n    total += i * i\nprint(total)",
         "x", "class A:\n    pass\n\nclass B(A):\n    def __init__(self):\n        super().__init__()",
         "y = [1, 2, 3]", "with open('f') as handle:\n    data = handle.read()"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model, tokenizer = labkit.load_base(dtype=torch.float32)
    return model.train(), tokenizer


def make_batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


@pytest.mark.parametrize("k", [2, 4, 8])  # k=8: one micro-batch ("x") predicts no token and adds nothing
def test_token_normalised_accumulation_gives_the_large_batchs_gradient(model_and_tokenizer, k):
    model, tokenizer = model_and_tokenizer
    batch = make_batch(tokenizer, TEXTS)
    reference = batch_gradients(model, batch)
    got = accumulated_gradients(model, split_batch(batch, k), normalisation="tokens")
    assert gradient_error(got, reference) < 1e-5


def test_the_mean_of_means_is_wrong_when_micro_batches_differ_in_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = make_batch(tokenizer, TEXTS)
    micro = split_batch(batch, 4)
    assert len({predicted_tokens(b) for b in micro}) > 1
    assert gradient_error(accumulated_gradients(model, micro, normalisation="mean_of_means"), batch_gradients(model, batch)) > 1e-2


def test_the_mean_of_means_is_right_when_every_micro_batch_has_the_same_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = tokenizer(TEXTS[3], return_tensors="pt")["input_ids"].repeat(4, 1)
    ids[1:, 2:] = torch.roll(ids[1:, 2:], 1, dims=1)  # different tokens, same length
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    got = accumulated_gradients(model, split_batch(batch, 4), normalisation="mean_of_means")
    assert gradient_error(got, batch_gradients(model, batch)) < 1e-5


def test_the_token_normalised_loss_is_transformers_num_items_in_batch_loss(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = make_batch(tokenizer, TEXTS)
    micro = split_batch(batch, 4)
    total = sum(predicted_tokens(b) for b in micro)
    with torch.no_grad():
        for b in micro:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            theirs = model.loss_function(logits=logits, labels=b["labels"], vocab_size=model.config.vocab_size,
                                         num_items_in_batch=torch.tensor(total))
            assert float(summed_token_loss(model, b) / total) == pytest.approx(float(theirs), rel=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda m, b: accumulated_gradients(m, split_batch(b, 2), normalisation="mean"), "normalisation must be one of"),
    (lambda m, b: split_batch(b, 9), "between 1 and the batch's 8 rows"),
    (lambda m, b: accumulated_gradients(m, [dict(b, labels=torch.full_like(b["labels"], IGNORE_INDEX))]), "micro-batch 0 has no predicted token"),
    (lambda m, b: accumulated_gradients(m, split_batch(b, 8), normalisation="mean_of_means"), "micro-batch 4 has no predicted token"),
])
def test_bad_input_is_refused_with_what_was_expected(model_and_tokenizer, call, message):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match=message):
        call(model, make_batch(tokenizer, TEXTS))
