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


TOOL_CHAT = {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
             "messages": [{"role": "user", "content": "Weather in Paris?"},
                          {"role": "assistant", "content": None, "tool_calls": [
                              {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                          {"role": "tool", "content": "18 C"}, {"role": "assistant", "content": "18 C."}]}


def test_a_tool_chat_keeps_its_tools_and_converts_only_to_chat():
    assert detect_format(TOOL_CHAT) == "chat"
    assert to_chat(TOOL_CHAT) == convert(TOOL_CHAT, "chat") == TOOL_CHAT
    assert to_chat(TOOL_CHAT, system="Be brief.")["messages"][0] == {"role": "system", "content": "Be brief."}
    for target in ("alpaca", "completion"):
        with pytest.raises(ValueError, match="has no instruction/answer form; keep it as chat"):
            convert(TOOL_CHAT, target)
    assert record_text(TOOL_CHAT).split("\n") == ["Weather in Paris?", "get_weather", "Paris", "18 C", "18 C."]


@pytest.mark.parametrize("arguments, rendered", [('{"city": "Paris"}', {"city": "Paris"}), ("{city", "{city")])
def test_to_chat_parses_json_string_arguments_for_the_chat_template(arguments, rendered):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    record = {**TOOL_CHAT, "messages": [TOOL_CHAT["messages"][0], {"role": "assistant", "content": "", "tool_calls": [call]}]}
    assert to_chat(record)["messages"][1]["tool_calls"][0]["function"]["arguments"] == rendered
    assert record["messages"][1]["tool_calls"][0] is call and call["function"]["arguments"] == arguments  # not mutated
