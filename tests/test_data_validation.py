"""Every kind of bad record is reported with its index, field path and what was expected; nothing is dropped silently."""

import copy
import json

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
    ("unknown role", "chat", chat(("user", "hi"), ("function", "3")), "'messages'[1]['role']",
     ["'function'", "expected one of system, user, assistant, tool"]),
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
                                  "is 'asistant' (did you mean 'assistant'?); expected one of system, user, assistant, tool")]


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


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Today's weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_CHAT = {"tools": [WEATHER], "messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "name": "get_weather", "content": "18 C, sunny"},
    {"role": "assistant", "content": "18 C and sunny."}]}
CALL = ("messages", 1, "tool_calls", 0, "function")


def edited(path: tuple, value) -> dict:
    """TOOL_CHAT with the value at ``path`` replaced (or deleted when ``value`` is ``...``)."""
    record = copy.deepcopy(TOOL_CHAT)
    *parents, last = path
    target = record
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return record


# (case, bad record, the one error it must give: field path, exact message)
TOOL_CASES = [
    ("call names a function not in tools", edited((*CALL, "name"), "get_wether"),
     "'messages'[1]['tool_calls'][0]['function']['name']", "is 'get_wether', which is not in 'tools'; expected one of get_weather"),
    ("call without tools", edited(("tools",), ...), "'messages'[1]['tool_calls'][0]['function']['name']",
     "is 'get_weather', which is not in 'tools'; expected a function listed in 'tools' (the record lists none)"),
    ("arguments not valid JSON", edited((*CALL, "arguments"), '{"city": Paris}'),
     "'messages'[1]['tool_calls'][0]['function']['arguments']",
     "is not valid JSON (Expecting value at character 9); expected a JSON object of the function's arguments"),
    ("arguments not an object", edited((*CALL, "arguments"), '["Paris"]'),
     "'messages'[1]['tool_calls'][0]['function']['arguments']",
     "is list ['Paris']; expected an object (a dict or a JSON object string) of the function's arguments"),
    ("tool result without a call", {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather?"}, {"role": "tool", "content": "18 C"}, {"role": "assistant", "content": "18 C."}]},
     "'messages'[1]['role']", "is 'tool' with no assistant tool call before it; expected a tool result right after "
     "the assistant message whose 'tool_calls' it answers"),
    ("tool result answers another function", edited(("messages", 2, "name"), "get_time"), "'messages'[2]['name']",
     "is 'get_time'; expected one of the functions the assistant called: get_weather"),
    ("ends on a tool result", edited(("messages", 3), ...), "'messages'[2]['role']",
     "is 'tool'; expected the last turn to be 'assistant', the training target (pass require_assistant_last=False for prompts)"),
    ("unknown message key", edited(("messages", 1, "tool_call"), []), "'messages'[1]['tool_call']",
     "is not a message field; expected only 'role', 'content' and 'tool_calls'"),
    ("tool_calls on a user message", edited(("messages", 0, "tool_calls"), []), "'messages'[0]['tool_calls']",
     "is not a message field; expected only 'role' and 'content'"),
    ("unknown record field", edited(("tool",), []), "'tool'",
     "is not a field of chat records (did you mean 'tools'?); expected only messages (optionally tools)"),
    ("unknown spec key", edited(("tools", 0, "function", "params"), {}), "'tools'[0]['function']['params']",
     "is not a field of a function spec; expected only 'name', 'description' and 'parameters'"),
    ("tools not a list", {"tools": WEATHER, "messages": GOOD_CHAT["messages"]},
     "'tools'", "is dict; expected a list of function specs"),
    ("spec without function", edited(("tools", 0), {"name": "get_weather"}), "'tools'[0]",
     "is {'name': 'get_weather'}; expected {'type': 'function', 'function': {'name': ..., 'description': ..., "
     "'parameters': {JSON schema}}}"),
    ("tool_calls not a list", edited(("messages", 1, "tool_calls"), "get_weather(Paris)"), "'messages'[1]['tool_calls']",
     "is 'get_weather(Paris)'; expected a non-empty list of calls"),
    ("tool_call_id not a string", edited(("messages", 2, "tool_call_id"), 7), "'messages'[2]['tool_call_id']",
     "is int; expected a string"),
    ("empty content without a call", {"tools": [WEATHER], "messages": [GOOD_CHAT["messages"][0], {"role": "assistant",
     "content": None}]}, "'messages'[1]['content']",
     "is NoneType None; expected a string"),
]


@pytest.mark.parametrize("case, record, path, message", TOOL_CASES, ids=[c[0] for c in TOOL_CASES])
def test_tool_call_errors_name_the_record_the_field_and_what_was_expected(case, record, path, message):
    errors = find_errors([TOOL_CHAT, record], "chat")
    assert errors == [(1, path, message)]


def test_a_tool_chat_passes_and_converts_only_to_chat():
    assert find_errors([TOOL_CHAT], "chat") == []
    as_string = edited((*CALL, "arguments"), json.dumps({"city": "Paris"}))
    assert find_errors([as_string, edited(("messages", 2, "name"), ...)], "chat") == []
    assert find_errors([edited(("messages", 1, "tool_calls", 0, "id"), "call_1") | {"x": 1}], "chat", allow_extra=["x", "id"]) == []
    assert find_errors([edited(("messages", 3), ...)], "chat", require_assistant_last=False) == []


def test_tool_fields_are_unknown_outside_chat():
    prompt = [{"role": "user", "content": "Weather?"}]
    record = {"prompt": prompt, "completion": [TOOL_CHAT["messages"][1]]}
    assert [e[1] for e in find_errors([record], "completion")] == ["'completion'[0]['tool_calls']"]


def test_a_template_that_ignores_tools_is_reported_not_crashed(tokenizer):
    assert "tool_calls" not in tokenizer.chat_template  # the shipped ChatML template renders no tools
    errors = find_errors([GOOD_CHAT, TOOL_CHAT], "chat", tokenizer=tokenizer, max_tokens=10_000)
    assert errors == [(1, "", "uses tools and tool_calls, but the tokenizer's chat template never reads them, so training "
                       "would silently drop them; expected a chat template that renders tools (e.g. Qwen2.5's)")]


TOOL_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\nTools: ' + (tools | tojson) + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') }}"
    "{%- for c in m.get('tool_calls', []) %}{{ '<tool_call>' + (c['function'] | tojson) + '</tool_call>' }}{%- endfor %}"
    "{{ '<|im_end|>\\n' }}{%- endfor %}")


def test_a_template_that_renders_tools_counts_their_tokens(tokenizer):
    tool_tokenizer = copy.deepcopy(tokenizer)
    tool_tokenizer.chat_template = TOOL_TEMPLATE
    text = tool_tokenizer.apply_chat_template(TOOL_CHAT["messages"], tools=TOOL_CHAT["tools"], tokenize=False)
    assert '"city": "Paris"' in text and "get_weather" in text.split("<|im_start|>user")[0]
    n_tokens = len(tool_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert find_errors([TOOL_CHAT], "chat", tokenizer=tool_tokenizer, max_tokens=n_tokens) == []
    assert find_errors([TOOL_CHAT], "chat", tokenizer=tool_tokenizer, max_tokens=n_tokens - 1)[0][2].startswith(
        f"has {n_tokens} tokens")
    as_string = edited((*CALL, "arguments"), json.dumps({"city": "Paris"}))  # rendered as the same object, not a string
    assert find_errors([as_string], "chat", tokenizer=tool_tokenizer, max_tokens=n_tokens) == []
    assert find_errors([as_string], "chat", tokenizer=tool_tokenizer, max_tokens=n_tokens - 1) != []


def test_cli_reports_a_bad_tool_call_record_with_exit_1(tmp_path, capsys):
    from labkit.cli import EXIT_OK, EXIT_PROBLEM, main

    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [TOOL_CHAT, edited((*CALL, "name"), "get_wether")]) + "\n")
    assert main(["data", "validate", str(path), "--format", "chat"]) == EXIT_PROBLEM
    out, err = capsys.readouterr()
    assert err.splitlines() == ["record 1: 'messages'[1]['tool_calls'][0]['function']['name'] is 'get_wether', "
                                "which is not in 'tools'; expected one of get_weather"]
    assert "2 records, 1 valid, 1 invalid (1 problems)" in out
    path.write_text(json.dumps(TOOL_CHAT) + "\n")
    assert main(["data", "validate", str(path), "--format", "chat"]) == EXIT_OK
