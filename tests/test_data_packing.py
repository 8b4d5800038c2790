"""Packed rows never let attention or the loss cross from one example into the next (checked on tensors)."""

import pytest
import torch

from labkit import tasks
from labkit.data import IGNORE_INDEX, tokenize_dataset
from labkit.data.packing import (allowed_attention, collate_packed, collate_padded, compare_throughput, example_ids, padded_batches,
                                 forward, pack, train_throughput)


@pytest.fixture(scope="module")
def examples(tokenizer):
    records = [{"messages": r["messages"]} for r in tasks.verifiable_tasks(4, fmt="chat", seed=7)]
    return tokenize_dataset(records, tokenizer, "chat")


@pytest.fixture(scope="module")
def packed(examples):
    return pack(examples, seq_length=96)


def test_packing_keeps_every_example_whole(examples, packed):
    pieces = []
    for row in packed:
        assert len(row["input_ids"]) <= 96
        assert sum(row["seq_lengths"]) == len(row["input_ids"])
        start = 0
        for n in row["seq_lengths"]:
            pieces.append((tuple(row["input_ids"][start:start + n]), tuple(row["labels"][start:start + n])))
            start += n
    originals = [(tuple(e["input_ids"]), tuple(e["labels"])) for e in examples]
    assert sorted(pieces) == sorted(originals)
    assert len(packed) < len(examples)


def test_position_ids_restart_at_every_example(packed, tokenizer):
    batch = collate_packed(list(packed.select(range(2))), tokenizer.pad_token_id)
    lengths = [n for row in packed.select(range(2)) for n in row["seq_lengths"]]
    expected = torch.cat([torch.arange(n) for n in lengths])
    assert torch.equal(batch["position_ids"][0], expected)
    assert "attention_mask" not in batch  # a mask would make transformers ignore the restarts


def test_no_label_predicts_across_a_boundary(packed, tokenizer):
    batch = collate_packed(list(packed), tokenizer.pad_token_id)
    starts = batch["position_ids"][0] == 0
    assert starts.sum() > len(packed)  # several examples per row
    # labels[t] is predicted from tokens < t; at an example's first token that would be the previous example
    assert (batch["labels"][0][starts] == IGNORE_INDEX).all()


def test_allowed_attention_is_block_diagonal_and_causal():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0]])
    allowed = allowed_attention(position_ids)[0]
    assert example_ids(position_ids).tolist() == [[0, 0, 0, 1, 1, 2]]
    assert allowed[2].tolist() == [True, True, True, False, False, False]
    assert allowed[4].tolist() == [False, False, False, True, True, False]
    assert allowed[5].tolist() == [False] * 5 + [True]


def test_packed_logits_equal_each_example_alone(base, packed):
    model, tokenizer = base
    row = max(packed, key=lambda r: len(r["seq_lengths"]))
    assert len(row["seq_lengths"]) >= 2
    batch = collate_packed([row], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = forward(model, batch).logits[0]  # (T, vocab)
        start = 0
        for n in row["seq_lengths"]:
            ids = torch.tensor([row["input_ids"][start:start + n]])
            alone = model(input_ids=ids, use_cache=False).logits[0]
            torch.testing.assert_close(logits[start:start + n], alone, rtol=1e-4, atol=1e-4)
            start += n


def test_packed_loss_equals_padded_loss(base, examples):
    """Same examples, same labels: the mean loss over trained tokens must not depend on the batching."""
    model, tokenizer = base
    rows = list(examples)
    packed_rows = list(pack(examples, seq_length=512))
    with torch.no_grad():
        padded_loss = forward(model, collate_padded(rows, tokenizer.pad_token_id)).loss
        packed_loss = forward(model, collate_packed(packed_rows, tokenizer.pad_token_id)).loss
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-4, atol=1e-4)


def test_throughput_counts_padding(base, examples):
    model, tokenizer = base
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        padded = train_throughput(model, [collate_padded(list(examples), tokenizer.pad_token_id)])
        packed = train_throughput(model, [collate_packed(list(pack(examples, 512)), tokenizer.pad_token_id)])
    finally:
        model.load_state_dict(state)
    lengths = [len(e["input_ids"]) for e in examples]
    assert padded.real_tokens == packed.real_tokens == packed.tokens == sum(lengths)
    assert padded.tokens == max(lengths) * len(lengths)
    assert packed.padding_share == 0 < padded.padding_share


def test_compare_throughput_runs_every_batch_and_leaves_the_model_alone(base, examples):
    model, tokenizer = base
    before = {k: v.clone() for k, v in model.state_dict().items()}
    padded = [collate_padded(list(examples.select(range(k, k + 4))), tokenizer.pad_token_id) for k in (0, 4, 8)]
    packed = [collate_packed(list(pack(examples, 512)), tokenizer.pad_token_id)]
    stats = compare_throughput(model, {"padded": padded, "packed": packed})
    assert stats["padded"].steps == 3 and stats["packed"].steps == 1
    assert stats["padded"].real_tokens == sum(len(examples[k]["input_ids"]) for k in range(12))
    assert stats["packed"].padding_share == 0 and stats["padded"].seconds > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pack_refuses_to_truncate(examples):
    longest = max(len(ids) for ids in examples["input_ids"])
    with pytest.raises(ValueError, match=f"with {longest} tokens"):
        pack(examples, seq_length=longest - 1)
    split_rows = pack(examples, seq_length=longest - 1, strategy="bfd_split")
    assert sum(len(r["input_ids"]) for r in split_rows) == sum(len(ids) for ids in examples["input_ids"])


def test_padded_batches_keep_every_row_in_order_and_a_short_last_batch(tokenizer):
    rows = tokenize_dataset(tasks.verifiable_tasks(7, seed=0, fmt="completion", tasks=["flip"]), tokenizer, "completion")
    batches = padded_batches(rows, tokenizer.pad_token_id, 3)
    assert [len(b["input_ids"]) for b in batches] == [3, 3, 1]
    assert torch.equal(batches[1]["input_ids"], collate_padded([rows[3], rows[4], rows[5]], tokenizer.pad_token_id)["input_ids"])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        padded_batches(rows, tokenizer.pad_token_id, 0)
