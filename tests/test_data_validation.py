"""Every kind of bad record is reported with its index, field path and what was expected; nothing is dropped silently."""

import pytest

from labkit import tasks
from labkit.data import DataFormatError, drop_invalid, find_errors, validate

GOOD_CHAT = {"messages": [{"role": "user", "content": "Add the two numbers.\n1 + 2"}, {"role": "assistant", "content": "3"}]}


def chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


# (case, fmt, bad record, field path the message must name, words the message must contain)
CASES = [
    ("not a dict", "chat", ["hi", "there"], "", ["is list", "expected a dict"]),
    ("missing field", "alpaca", {"instruction": "Add.", "input": ""}, "'output'", ["is missing", "instruction, input, output"]),
    ("extra field", "alpaca", {"instruction": "Add.", "input": "", "outptu": "3", "output": "3"}, "'outptu'",
     ["not a field", "did you mean 'output'"]),
    ("wrong type of field", "completion", {"prompt": "Add.\n1 + 2\nAnswer:", "completion": 3}, "'completion'",
     ["is int", "expected a string"]),
    ("messages not a list", "chat", {"messages": "user: hi"}, "'messages'", ["is str", "expected a list of messages"]),
    ("message not a dict", "chat", {"messages": ["hi", {"role": "assistant", "content": "3"}]}, "'messages'[0]",
     ["is str", "expected a dict with 'role' and 'content'"]),
    ("message without content", "chat", {"messages": [{"role": "user"}, {"role": "assistant", "content": "3"}]},
     "'messages'[0]", ["has no 'content'"]),
    ("empty string", "alpaca", {"instruction": "  ", "input": "", "output": "3"}, "'instruction'", ["only whitespace"]),
    ("empty content", "chat", chat(("user", "hi"), ("assistant", "")), "'messages'[1]['content']", ["is empty"]),
    ("misspelled role", "chat", chat(("user", "hi"), ("asistant", "3")), "'messages'[1]['role']",
     ["'asistant'", "did you mean 'assistant'", "expected one of system, user, assistant"]),
    ("unknown role", "chat", chat(("user", "hi"), ("tool", "3")), "'messages'[1]['role']", ["'tool'", "expected one of"]),
    ("non-alternating turns", "chat", chat(("user", "a"), ("user", "b"), ("assistant", "c")), "'messages'[1]['role']",
     ["'user' after 'user'", "alternate"]),
    ("assistant first", "chat", chat(("assistant", "a"), ("user", "b"), ("assistant", "c")), "'messages'[0]['role']",
     ["as the first turn", "starting with user"]),
    ("system not first", "chat", chat(("user", "a"), ("assistant", "b"), ("system", "c")), "'messages'[2]['role']",
     ["'system' after the first message"]),
    ("no assistant at the end", "chat", chat(("user", "a"), ("assistant", "b"), ("user", "c")), "'messages'[2]['role']",
     ["expected the last turn to be 'assistant'"]),
    ("no user turn", "chat", chat(("system", "a")), "'messages'", ["has no user turn"]),
    ("non-string content", "chat", chat(("user", "hi"), ("assistant", 3)), "'messages'[1]['content']",
     ["is int", "expected a string"]),
    ("invalid UTF-8 bytes", "alpaca", {"instruction": "Add.", "input": "", "output": b"\xff3"}, "'output'",
     ["not valid UTF-8", "0xff"]),
    ("invalid UTF-8 surrogate", "chat", chat(("user", b"hi\xff".decode("utf-8", "surrogateescape")), ("assistant", "3")),
     "'messages'[0]['content']", ["invalid UTF-8", "character 2"]),
    ("replacement character", "chat", chat(("user", "hi"), ("assistant", "caf\ufffd")), "'messages'[1]['content']",
     ["U+FFFD", "character 3"]),
    ("chosen equals rejected", "preference", {"prompt": "Add.\n1 + 2\nAnswer:", "chosen": " 3", "rejected": " 3"},
     "'rejected'", ["identical to 'chosen'"]),
    ("conversational preference without assistant", "preference",
     {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "3"}],
      "rejected": [{"role": "user", "content": "4"}]}, "'rejected'[0]['role']", ["'user'"]),
]


@pytest.mark.parametrize("case, fmt, record, path, words", CASES, ids=[c[0] for c in CASES])
def test_bad_record_is_reported_with_index_and_field(case, fmt, record, path, words):
    good = {"chat": GOOD_CHAT, "alpaca": {"instruction": "Add.", "input": "1 + 2", "output": "3"},
            "completion": {"prompt": "Add.\n1 + 2\nAnswer:", "completion": " 3"},
            "preference": {"prompt": "Add.\n1 + 2\nAnswer:", "chosen": " 3", "rejected": " 4"}}[fmt]
    records = [good, good, record, good]
    with pytest.raises(DataFormatError) as info:
        validate(records, fmt)
    assert isinstance(info.value, ValueError)
    assert {e[0] for e in info.value.errors} == {2}
    message = str(info.value).splitlines()[0] if len(info.value.errors) == 1 else str(info.value)
    assert f"record 2: {path}" in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_house_style_message_for_a_misspelled_role():
    records = [GOOD_CHAT] * 17 + [chat(("system", "s"), ("user", "a"), ("asistant", "b"))]
    with pytest.raises(DataFormatError) as info:
        validate(records, "chat")
    assert info.value.errors == [(17, "'messages'[2]['role']",
                                  "is 'asistant' (did you mean 'assistant'?); expected one of system, user, assistant")]


def test_every_bad_record_is_reported_not_only_the_first():
    bad_at = [3, 40, 41, 99]
    records = [GOOD_CHAT] * 100
    for i in bad_at:
        records[i] = chat(("user", "x"), ("assistant", ""))
    with pytest.raises(DataFormatError) as info:
        validate(records, "chat")
    assert [e[0] for e in info.value.errors] == bad_at
    assert str(info.value).startswith("4 of 100 records are invalid")


def test_nothing_is_dropped_unless_asked():
    records = [GOOD_CHAT, chat(("user", "x")), GOOD_CHAT]
    before = [dict(r) for r in records]
    with pytest.raises(DataFormatError):
        validate(records, "chat")
    assert records == before
    kept, errors = drop_invalid(records, "chat")
    assert kept == [GOOD_CHAT, GOOD_CHAT] and [e[0] for e in errors] == [1]


def test_options_relax_the_training_defaults():
    prompt_only = chat(("user", "a"))
    assert find_errors([prompt_only], "chat", require_assistant_last=False) == []
    tagged = {**GOOD_CHAT, "source": "web"}
    assert find_errors([tagged], "chat")
    assert find_errors([tagged], "chat", allow_extra=["source"]) == []


@pytest.mark.parametrize("fmt", ["chat", "alpaca", "completion"])
def test_labkit_task_data_is_clean(fmt):
    assert validate(tasks.verifiable_tasks(5, fmt=fmt).to_list(), fmt, allow_extra=["task", "answer"]) is None


@pytest.mark.parametrize("fmt", ["chat", "completion"])
def test_labkit_preference_data_is_clean(fmt):
    assert validate(tasks.preference_pairs(5, fmt=fmt).to_list(), "preference", allow_extra=["task"]) is None


def test_over_length_example_is_reported_with_its_token_count(tokenizer):
    long_answer = "word " * 300
    records = [GOOD_CHAT, chat(("user", "Repeat."), ("assistant", long_answer))]
    n_tokens = len(tokenizer.apply_chat_template(records[1]["messages"], tokenize=True, return_dict=True)["input_ids"])
    assert n_tokens > 100
    errors = find_errors(records, "chat", tokenizer=tokenizer, max_tokens=100)
    assert errors == [(1, "", errors[0][2])]
    assert f"has {n_tokens} tokens; expected at most 100" in errors[0][2]
    assert find_errors(records, "chat", tokenizer=tokenizer, max_tokens=n_tokens) == []


SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                              {"from": "gpt", "value": "Hello"}]}


@pytest.mark.parametrize("fmt, record, path, needles", [
    ("sharegpt", {"conversations": [{"from": "humna", "value": "a"}, {"from": "gpt", "value": "b"}]},
     "'conversations'[0]['from']", ["is 'humna' (did you mean 'human'?)", "system, human, gpt"]),
    ("sharegpt", {"conversations": [{"from": "gpt", "value": "a"}]}, "'conversations'[0]['from']",
     ["is 'gpt' as the first turn", "human, gpt, human"]),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a"}]}, "'conversations'[0]['from']",
     ["expected the last turn to be 'gpt'"]),
    ("sharegpt", {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "b"}]},
     "'conversations'[0]['value']", ["is empty"]),
    ("sharegpt", {"conversations": [{"from": "human", "value": "a", "weight": 0}, {"from": "gpt", "value": "b"}]},
     "'conversations'[0]['weight']", ["not a turn field"]),
    ("sharegpt", {"conversations": [{"value": "a"}, {"from": "gpt", "value": "b"}]}, "'conversations'[0]",
     ["has no 'from'"]),
    ("sharegpt", {"conversations": []}, "'conversations'", ["is empty; expected a list of turns"]),
    ("kto", {"prompt": "p", "completion": " c", "label": 1}, "'label'", ["is int 1; expected true (desirable) or false"]),
    ("kto", {"prompt": "p", "completion": " c"}, "'label'", ["is missing; kto records need prompt, completion, label"]),
    ("kto", {"prompt": "p", "completion": "", "label": False}, "'completion'", ["is empty"]),
    ("text", {"text": " "}, "'text'", ["only whitespace"]),
    ("text", {"txt": "code"}, "'txt'", ["did you mean 'text'?"]),
])
def test_the_formats_users_bring_get_the_same_errors(fmt, record, path, needles):
    errors = find_errors([record], fmt)
    assert any(p == path and all(n in message for n in needles) for _, p, message in errors), errors


@pytest.mark.parametrize("fmt, record", [
    ("sharegpt", SHAREGPT),
    ("kto", {"prompt": "p", "completion": " c", "label": False}),
    ("kto", {"prompt": [{"role": "user", "content": "p"}], "completion": [{"role": "assistant", "content": "c"}],
             "label": True}),
    ("text", {"text": "def f():\n    return 1\n"}),
])
def test_clean_records_of_those_formats_pass(fmt, record, tokenizer):
    assert find_errors([record], fmt) == []
    assert find_errors([record], fmt, tokenizer=tokenizer, max_tokens=1)[0][2].startswith("has ")  # lengths too
