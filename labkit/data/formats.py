"""Record formats -- instruction (Alpaca), chat (``messages``, optionally with tool calls), ShareGPT, completion,
preference, KTO, plain text -- and conversions between them."""

from __future__ import annotations

import json
from collections.abc import Mapping

FORMATS = ("alpaca", "chat", "sharegpt", "completion", "preference", "kto", "text")
ROLES = ("system", "user", "assistant")
FIELDS = {
    "alpaca": ("instruction", "input", "output"),
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "text": ("text",),
}
"""The fields each format requires (TRL's names; Alpaca's ``input`` may be empty). ``sharegpt``: turns of
``from``/``value`` (:data:`SHAREGPT_ROLES`); ``kto``: TRL's unpaired preference rows, ``label`` true for a
desirable completion; ``text``: plain text for continued pretraining."""

OPTIONAL_FIELDS = {"chat": ("tools",)}
"""Fields a format may carry besides its own: a chat's ``tools``, the function specs its tool calls may name
(``{"type": "function", "function": {"name", "description", "parameters"}}``, as transformers' chat templates take them)."""

TOOL_ROLE = "tool"
"""The role of a message that answers a tool call (a chat with ``tools`` only)."""

TOOL_MESSAGE_KEYS = {"assistant": ("tool_calls",), TOOL_ROLE: ("tool_call_id", "name")}
"""Optional message keys in a chat with tools: an assistant's ``tool_calls`` (a list of ``{"type": "function",
"function": {"name", "arguments"}}``, arguments a dict or a JSON object string; its content may then be empty or
None) and a tool result's ``tool_call_id`` or function ``name``."""

SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
"""ShareGPT's ``from`` values and the chat roles they become."""

ANSWER_CUE = "\nAnswer:"
"""Ends a completion-format prompt, as in ``labkit.tasks.completion_prompt``."""


def detect_format(record: Mapping) -> str:
    """The format whose required fields ``record`` has (preference is checked before completion)."""
    for fmt in ("chat", "sharegpt", "preference", "kto", "alpaca", "completion", "text"):
        if all(f in record for f in FIELDS[fmt]):
            return fmt
    raise ValueError(f"record has fields {sorted(record)}; expected the fields of one of "
                     + "; ".join(f"{fmt}: {', '.join(fields)}" for fmt, fields in FIELDS.items()))


def _user_text(instruction: str, input_: str) -> str:
    return f"{instruction}\n{input_}" if input_ else instruction


def uses_tools(record: Mapping) -> bool:
    """True if a chat record has ``tools``, a message with ``tool_calls`` or a ``tool`` message."""
    messages = record.get("messages")
    return "tools" in record or (isinstance(messages, list) and any(
        isinstance(m, Mapping) and ("tool_calls" in m or m.get("role") == TOOL_ROLE) for m in messages))


def _with_argument_dicts(message: Mapping) -> Mapping:
    """``message`` with each tool call's JSON-string arguments parsed: chat templates render arguments with ``tojson``."""
    if not isinstance(message, Mapping) or not isinstance(message.get("tool_calls"), list):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("arguments"), str):
            try:
                call = {**call, "function": {**function, "arguments": json.loads(function["arguments"])}}
            except json.JSONDecodeError:
                pass  # left as it is; validation reports it
        calls.append(call)
    return {**message, "tool_calls": calls}


def to_chat(record: Mapping, *, system: str | None = None) -> dict:
    """``{"messages": [...]}``: one user turn (instruction, newline, input) and one assistant turn.

    A chat keeps its ``tools`` and its messages their ``tool_calls`` (JSON-string arguments parsed into dicts, as
    transformers' chat templates expect), so a chat template renders them.
    """
    fmt = detect_format(record)
    if fmt == "chat":
        messages = [_with_argument_dicts(m) for m in record["messages"]]
    elif fmt == "sharegpt":
        messages = [{"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]} for turn in record["conversations"]]
    elif fmt == "alpaca":
        messages = [{"role": "user", "content": _user_text(record["instruction"], record["input"])},
                    {"role": "assistant", "content": record["output"]}]
    elif fmt == "completion":
        messages = [{"role": "user", "content": record["prompt"].removesuffix(ANSWER_CUE)},
                    {"role": "assistant", "content": record["completion"].removeprefix(" ")}]
    elif fmt == "preference":
        raise ValueError("a preference record holds two answers; convert 'chosen' and 'rejected' separately")
    else:
        raise ValueError(f"a {fmt} record is not one exchange with a target answer; it does not convert to chat")
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    return {"messages": messages, "tools": list(record["tools"])} if "tools" in record else {"messages": messages}


def to_alpaca(record: Mapping) -> dict:
    """``{"instruction", "input", "output"}``; a chat must be a single user/assistant exchange (system dropped)."""
    fmt = detect_format(record)
    if fmt == "alpaca":
        return {k: record[k] for k in FIELDS["alpaca"]}
    if uses_tools(record):
        raise ValueError("a chat with tools or tool calls has no instruction/answer form; keep it as chat")
    turns = [m for m in to_chat(record)["messages"] if m["role"] != "system"]
    if [m["role"] for m in turns] != ["user", "assistant"]:
        raise ValueError(f"only a single user/assistant exchange converts to alpaca; got roles {[m['role'] for m in turns]}")
    instruction, _, input_ = turns[0]["content"].partition("\n")
    return {"instruction": instruction, "input": input_, "output": turns[1]["content"]}


def to_completion(record: Mapping) -> dict:
    """TRL's prompt-completion format as plain text: the prompt ends in ``Answer:``, the completion starts with a space.

    The space belongs to the completion because BPE merges it into the answer's first token.
    """
    if detect_format(record) == "completion":
        return {k: record[k] for k in FIELDS["completion"]}
    a = to_alpaca(record)
    return {"prompt": _user_text(a["instruction"], a["input"]) + ANSWER_CUE, "completion": " " + a["output"]}


def convert(record: Mapping, fmt: str) -> dict:
    """``record`` (alpaca, chat or completion) in format ``fmt``; a chat with tool calls converts only to chat."""
    converters = {"chat": to_chat, "alpaca": to_alpaca, "completion": to_completion}
    if fmt not in converters:
        raise ValueError(f"fmt must be one of {', '.join(converters)}; got {fmt!r}")
    return converters[fmt](record)


def record_text(record: Mapping) -> str:
    """Every string a record holds, in field order, joined by newlines: what quality filters and dedup read."""
    parts: list[str] = []

    def collect(value) -> None:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, Mapping):  # a message: its content, not its role (nor a tool call's type)
            for k, v in value.items():
                if k not in ("role", "from", "type"):
                    collect(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)

    try:
        fields = FIELDS[detect_format(record)]
    except ValueError:
        fields = tuple(record)
    for field in fields:
        collect(record.get(field))
    return "\n".join(parts)
