"""Conversions between alpaca, chat and completion records agree with labkit.tasks' own renderings."""

import pytest

from labkit import tasks
from labkit.data import convert, detect_format, record_text, to_alpaca, to_chat
from labkit.data.formats import ANSWER_CUE


@pytest.fixture(scope="module")
def rows():
    return {fmt: tasks.verifiable_tasks(3, fmt=fmt, seed=5).to_list() for fmt in ("chat", "alpaca", "completion")}


@pytest.mark.parametrize("source", ["chat", "alpaca", "completion"])
@pytest.mark.parametrize("target", ["chat", "alpaca", "completion"])
def test_conversion_matches_the_task_generator(rows, source, target):
    fields = {"chat": ["messages"], "alpaca": ["instruction", "input", "output"], "completion": ["prompt", "completion"]}
    for src, expected in zip(rows[source], rows[target]):
        record = {k: src[k] for k in fields[source]}
        assert convert(record, target) == {k: expected[k] for k in fields[target]}


def test_detect_format_and_its_error():
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}) == "preference"
    assert detect_format({"prompt": "p", "completion": "a"}) == "completion"
    assert detect_format({"prompt": "p", "completion": "a", "label": True}) == "kto"
    assert detect_format({"conversations": []}) == "sharegpt" and detect_format({"text": "x"}) == "text"
    with pytest.raises(ValueError, match="expected the fields of one of"):
        detect_format({"body": "hello"})


def test_sharegpt_becomes_a_chat_and_text_does_not():
    chat = to_chat({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                      {"from": "gpt", "value": "A"}]})
    assert chat == {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                 {"role": "assistant", "content": "A"}]}
    assert convert({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}, "completion") == {
        "prompt": "Q" + ANSWER_CUE, "completion": " A"}
    with pytest.raises(ValueError, match="a text record is not one exchange"):
        to_chat({"text": "x"})
    assert record_text({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}) == "Q\nA"


def test_system_prompt_and_multi_turn_limits():
    chat = to_chat({"instruction": "Add.", "input": "", "output": "3"}, system="Be brief.")
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant"]
    assert to_alpaca(chat) == {"instruction": "Add.", "input": "", "output": "3"}
    two_turns = {"messages": chat["messages"][1:] * 2}
    with pytest.raises(ValueError, match="single user/assistant exchange"):
        to_alpaca(two_turns)


def test_record_text_reads_contents_not_roles():
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "task": "x"}
    assert record_text(record) == "a\nb"
