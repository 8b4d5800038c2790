"""labkit.stability: scrambled batches, the validation token loss, and the share of clipped steps."""

import pytest
import torch

from labkit.accumulation import IGNORE_INDEX
from labkit.stability import clipped_share, scramble_answers, token_loss, with_bad_batches


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 50, (2, 6), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX  # the prompt
    labels[1, 5] = IGNORE_INDEX   # padding
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_scrambling_changes_the_answer_tokens_only_and_keeps_inputs_and_labels_together():
    batch = make_batch()
    scrambled = scramble_answers(batch, vocab_size=1000, seed=3)
    answer = batch["labels"] != IGNORE_INDEX
    assert torch.equal(scrambled["input_ids"][~answer], batch["input_ids"][~answer])
    assert torch.equal(scrambled["labels"][~answer], batch["labels"][~answer])
    assert torch.equal(scrambled["input_ids"][answer], scrambled["labels"][answer])
    assert not torch.equal(scrambled["labels"][answer], batch["labels"][answer])
    assert torch.equal(batch["labels"], make_batch()["labels"])  # the original is untouched


def test_bad_batches_replace_exactly_the_named_positions():
    batches = [make_batch(i) for i in range(5)]
    mixed = with_bad_batches(batches, [1, 3], vocab_size=1000)
    changed = [not torch.equal(m["labels"], b["labels"]) for m, b in zip(mixed, batches)]
    assert changed == [False, True, False, True, False]
    with pytest.raises(ValueError, match=r"must lie in 0..4"):
        with_bad_batches(batches, [5], vocab_size=1000)


def test_token_loss_of_one_batch_is_the_models_own_mean_loss(base):
    model, tokenizer = base
    ids = tokenizer(["def f(x):\n    return x\n", "print(1)\n"], padding=True, return_tensors="pt")
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, IGNORE_INDEX)
    batch = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "labels": labels}
    with torch.no_grad():
        expected = model(**batch).loss
    assert token_loss(model, [batch]) == pytest.approx(float(expected), rel=1e-5)


def test_token_loss_weighs_batches_by_their_tokens_not_equally(base):
    model, tokenizer = base
    texts = ["x = 1\n", "for i in range(10):\n    print(i * i)\n"]
    batches = []
    for text in texts:
        ids = tokenizer([text], return_tensors="pt")
        batches.append({"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "labels": ids["input_ids"]})
    per_batch = [token_loss(model, [b]) for b in batches]
    tokens = [b["labels"].shape[1] - 1 for b in batches]
    assert token_loss(model, batches) == pytest.approx(sum(l * t for l, t in zip(per_batch, tokens)) / sum(tokens), rel=1e-5)
    empty = dict(batches[0], labels=torch.full_like(batches[0]["labels"], IGNORE_INDEX))
    with pytest.raises(ValueError, match="no predicted token"):
        token_loss(model, [empty])


@pytest.mark.parametrize("norms, threshold, share", [([0.5, 2.0, 3.0, 1.0], 1.0, 0.5), ([0.1, 0.2], 1.0, 0.0), ([5.0], 1.0, 1.0)])
def test_clipped_share_counts_steps_whose_norm_exceeds_the_threshold(norms, threshold, share):
    assert clipped_share([{"grad_norm": n} for n in norms], threshold) == share
    with pytest.raises(ValueError, match="empty"):
        clipped_share([], threshold)
