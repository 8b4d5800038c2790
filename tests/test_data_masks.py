"""Loss masks from labkit.data equal the ones TRL's SFTTrainer builds on the same examples."""

import copy
import pytest
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from labkit import tasks
from labkit.data import IGNORE_INDEX, tokenize_example

MULTI_TURN = [
    {"messages": [{"role": "system", "content": "Answer with the number only."},
                  {"role": "user", "content": "Add the two numbers.\n12 + 30"},
                  {"role": "assistant", "content": "42"},
                  {"role": "user", "content": "And 1 + 1?"},
                  {"role": "assistant", "content": "2"}]},
    {"messages": [{"role": "user", "content": "Show code:"},
                  {"role": "assistant", "content": "def f(x):\n    return {'a': [x, (1, 2)]}  # brackets survive"}]},
]


def trl_prepared(model, tokenizer, records, tmp_path, **config):
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=None,
                     dataset_num_proc=None, **config)
    # a copy: SFTTrainer patches the model's forward in place, and the session's model is shared
    trainer = SFTTrainer(model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer)
    return trainer.train_dataset


@pytest.fixture(scope="module")
def chat_records():
    return [{"messages": r["messages"]} for r in tasks.verifiable_tasks(3, fmt="chat", seed=4)] + MULTI_TURN


def test_assistant_only_masks_equal_trl(base, chat_records, tmp_path):
    model, tokenizer = base
    theirs = trl_prepared(model, tokenizer, chat_records, tmp_path, assistant_only_loss=True)
    for i, record in enumerate(chat_records):
        ours = tokenize_example(record, tokenizer, "chat")
        assert ours["input_ids"] == theirs[i]["input_ids"], f"record {i}: token ids differ"
        assert ours["labels"] == theirs[i]["labels"], f"record {i}: labels differ"
        assert IGNORE_INDEX in ours["labels"] and any(label != IGNORE_INDEX for label in ours["labels"])


def test_completion_only_masks_equal_trl(base, tmp_path):
    model, tokenizer = base
    records = [{"prompt": r["prompt"], "completion": r["completion"]} for r in tasks.verifiable_tasks(3, fmt="completion")]
    records.append({"prompt": "def add(a, b):\n", "completion": "    return a + b\n"})
    theirs = trl_prepared(model, tokenizer, records, tmp_path, completion_only_loss=True)
    for i, record in enumerate(records):
        ours = tokenize_example(record, tokenizer, "completion")
        assert ours["input_ids"] == theirs[i]["input_ids"], f"record {i}: token ids differ"
        assert ours["labels"] == theirs[i]["labels"], f"record {i}: labels differ"


def test_trained_span_decodes_to_the_answer_and_its_stop_token(tokenizer):
    record = tasks.verifiable_tasks(1, fmt="alpaca", seed=2)[0]
    out = tokenize_example(record, tokenizer, "alpaca")
    trained = [t for t, label in zip(out["input_ids"], out["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == record["output"] + "<|im_end|>"


def test_mask_prompt_false_trains_on_everything(tokenizer):
    record = tasks.verifiable_tasks(1, fmt="completion")[0]
    out = tokenize_example(record, tokenizer, "completion", mask_prompt=False)
    assert out["labels"] == out["input_ids"]
