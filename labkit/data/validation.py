"""Validate records against a format and report every bad record with its index, field path and what was expected."""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping, Sequence

from labkit.data.formats import (FIELDS, FORMATS, OPTIONAL_FIELDS, ROLES, SHAREGPT_ROLES, TOOL_MESSAGE_KEYS, TOOL_ROLE,
                                 to_chat, uses_tools)

ErrorEntry = tuple[int, str, str]
"""(record index, field path such as ``'messages'[2]['role']``, message)."""

SHOWN_ERRORS = 5
"""How many problems a ``DataFormatError`` message lists; ``.errors`` holds all of them."""


class DataFormatError(ValueError):
    """Bad records. ``.errors`` lists every problem as (record index, field path, message)."""

    def __init__(self, errors: Sequence[ErrorEntry], n_records: int | None = None):
        self.errors = list(errors)
        self.n_records = n_records
        lines = [format_error(e) for e in self.errors[:SHOWN_ERRORS]]
        if len(self.errors) == 1:
            super().__init__(lines[0])
            return
        n_bad = len({e[0] for e in self.errors})
        of = f" of {n_records}" if n_records is not None else ""
        more = f"\n  ... and {len(self.errors) - SHOWN_ERRORS} more (see .errors)" if len(self.errors) > SHOWN_ERRORS else ""
        super().__init__(f"{n_bad}{of} records are invalid ({len(self.errors)} problems):\n  " + "\n  ".join(lines) + more)


def format_error(error: ErrorEntry) -> str:
    index, path, message = error
    return f"record {index}: {path} {message}" if path else f"record {index}: {message}"


def _path(*parts: str | int) -> str:
    head, *rest = parts
    return repr(head) + "".join(f"[{p!r}]" for p in rest)


def _listing(items) -> str:
    """``'a', 'b' and 'c'``."""
    quoted = [repr(x) for x in items]
    return " and ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def _type_name(value) -> str:
    return type(value).__name__


def _text_problem(value) -> str | None:
    """Why ``value`` is not clean text, or None."""
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as e:
            return f"is bytes that are not valid UTF-8 (byte {value[e.start]:#04x} at offset {e.start}); expected text"
        return "is bytes; expected a string (decode it as UTF-8 first)"
    if not isinstance(value, str):
        return f"is {_type_name(value)} {value!r:.40}; expected a string"
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":  # how undecodable bytes survive errors="surrogateescape"
            return f"holds invalid UTF-8 (lone surrogate {ch!r} at character {i}); expected valid text"
    if "\ufffd" in value:
        return (f"holds the replacement character U+FFFD at character {value.index(chr(0xFFFD))}; "
                "the text was decoded with errors='replace' and lost bytes")
    return None


def _check_text(errors: list, i: int, path: str, value, *, allow_empty: bool = False) -> None:
    problem = _text_problem(value)
    if problem:
        errors.append((i, path, problem))
    elif not allow_empty and not value.strip():
        errors.append((i, path, f"is {'empty' if not value else 'only whitespace'}; expected non-empty text"))


def _check_fields(errors: list, i: int, record: Mapping, fmt: str, allow_extra) -> None:
    required = FIELDS[fmt]
    for field in required:
        if field not in record:
            errors.append((i, repr(field), f"is missing; {fmt} records need {', '.join(required)}"))
    if allow_extra is True:
        return
    optional = OPTIONAL_FIELDS.get(fmt, ())
    allowed = set(required) | set(optional) | set(allow_extra or ())
    for field in record:
        if field not in allowed:
            near = difflib.get_close_matches(str(field), required + optional, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            also = f" (optionally {', '.join(optional)})" if optional else ""
            errors.append((i, repr(field), f"is not a field of {fmt} records{hint}; expected only {', '.join(required)}{also}"))


def _check_messages(errors: list, i: int, field: str, messages, allow_extra, tools: bool = False) -> list | None:
    """Check each message of ``record[field]``; return [(field, index, role)] for the turn-order check, None if broken.

    ``tools``: a chat, whose messages may also be tool calls and results (checked by ``_check_tool_use``); a tool
    result and the assistant reply after it continue the assistant's turn, so neither enters the turn order.
    """
    if not isinstance(messages, list):
        errors.append((i, repr(field), f"is {_type_name(messages)}; expected a list of messages"))
        return None
    if not messages:
        errors.append((i, repr(field), "is empty; expected at least one message"))
        return None
    roles: list[tuple[str, int, str | None]] = []
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping):
            errors.append((i, _path(field, j), f"is {_type_name(message)}; expected a dict with 'role' and 'content'"))
            roles.append((field, j, None))
            continue
        for key in ("role", "content"):
            if key not in message:
                errors.append((i, _path(field, j), f"has no {key!r}; expected 'role' and 'content'"))
        role = message.get("role")
        extra_keys = TOOL_MESSAGE_KEYS.get(role, ()) if tools and isinstance(role, str) else ()
        if allow_extra is not True:
            for key in message:
                if key not in ("role", "content", *extra_keys) and key not in set(allow_extra or ()):
                    errors.append((i, _path(field, j, key), "is not a message field; expected only "
                                   + _listing(("role", "content", *extra_keys))))
        known = ROLES + (TOOL_ROLE,) if tools else ROLES
        if "role" in message and role not in known:
            near = difflib.get_close_matches(str(role), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            errors.append((i, _path(field, j, "role"), f"is {role!r}{hint}; expected one of {', '.join(known)}"))
            role = None
        calls = "tool_calls" in message and role == "assistant"
        if "content" in message and not (calls and message["content"] in (None, "")):
            _check_text(errors, i, _path(field, j, "content"), message["content"])
        turn = [r for _, _, r in roles if r != TOOL_ROLE]
        if role == TOOL_ROLE or (role == "assistant" and roles[-1:] and roles[-1][2] == TOOL_ROLE and turn[-1:] == ["assistant"]):
            roles.append((field, j, TOOL_ROLE))  # inside the assistant's turn: left out of the turn order below
        else:
            roles.append((field, j, role))
    if tools:
        roles = [r for r in roles if r[2] != TOOL_ROLE]
    return None if any(r is None for _, _, r in roles) else roles  # a broken message is reported once, not again


def _check_sharegpt(errors: list, i: int, turns, allow_extra) -> list | None:
    """Check ShareGPT's ``from``/``value`` turns; return [(field, index, chat role)] for the turn-order check."""
    field = "conversations"
    if not isinstance(turns, list) or not turns:
        errors.append((i, repr(field), f"is {'empty' if turns == [] else _type_name(turns)}; expected a list of turns"))
        return None
    roles: list[tuple[str, int, str | None]] = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            errors.append((i, _path(field, j), f"is {_type_name(turn)}; expected a dict with 'from' and 'value'"))
            roles.append((field, j, None))
            continue
        for key in ("from", "value"):
            if key not in turn:
                errors.append((i, _path(field, j), f"has no {key!r}; expected 'from' and 'value'"))
        if allow_extra is not True:
            for key in turn:
                if key not in ("from", "value") and key not in set(allow_extra or ()):
                    errors.append((i, _path(field, j, key), "is not a turn field; expected only 'from' and 'value'"))
        speaker = turn.get("from")
        if "from" in turn and speaker not in SHAREGPT_ROLES:
            near = difflib.get_close_matches(str(speaker), SHAREGPT_ROLES, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            errors.append((i, _path(field, j, "from"), f"is {speaker!r}{hint}; expected one of {', '.join(SHAREGPT_ROLES)}"))
        if "value" in turn:
            _check_text(errors, i, _path(field, j, "value"), turn["value"])
        roles.append((field, j, SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None))
    return None if any(r is None for _, _, r in roles) else roles


def _check_tool_use(errors: list, i: int, record: Mapping, *, allow_extra, require_assistant_last: bool) -> None:
    """Check a chat's ``tools`` and tool calls: each call names a function in ``tools`` with arguments that are
    a JSON object, and each tool result answers a call of the assistant message before it."""
    names: list[str] = []
    n_before = len(errors)
    specs = record.get("tools", [])
    if not isinstance(specs, list):
        errors.append((i, "'tools'", f"is {_type_name(specs)}; expected a list of function specs"))
        specs = []
    spec_keys = ("type", "function"), ("name", "description", "parameters")
    for k, spec in enumerate(specs):
        function = spec.get("function") if isinstance(spec, Mapping) else None
        if not isinstance(function, Mapping) or spec.get("type", "function") != "function":
            errors.append((i, _path("tools", k), f"is {spec!r:.60}; expected {{'type': 'function', 'function': "
                           "{'name': ..., 'description': ..., 'parameters': {JSON schema}}}"))
            continue
        for path, value, allowed in ((("tools", k), spec, spec_keys[0]), (("tools", k, "function"), function, spec_keys[1])):
            for key in value if allow_extra is not True else ():
                if key not in allowed and key not in set(allow_extra or ()):
                    errors.append((i, _path(*path, key), f"is not a field of a function spec; expected only "
                                   f"{_listing(allowed)}"))
        if not isinstance(function.get("name"), str) or not function["name"]:
            errors.append((i, _path("tools", k, "function", "name"), f"is {function.get('name')!r}; expected a function name"))
        else:
            names.append(function["name"])
        if not isinstance(function.get("parameters", {}), Mapping):
            errors.append((i, _path("tools", k, "function", "parameters"), "is not a dict; expected a JSON schema object"))
    specs_ok = len(errors) == n_before  # a call to a function in a broken spec is not reported again
    open_calls: list | None = None  # the function names the last assistant message called, None after any other message
    messages = record.get("messages") if isinstance(record.get("messages"), list) else []
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping):
            continue  # reported by _check_messages
        role = message.get("role")
        if role == TOOL_ROLE:
            if open_calls is None:
                errors.append((i, _path("messages", j, "role"), "is 'tool' with no assistant tool call before it; expected "
                               "a tool result right after the assistant message whose 'tool_calls' it answers"))
            elif "name" in message and open_calls and message["name"] not in open_calls and set(open_calls) <= set(names):
                errors.append((i, _path("messages", j, "name"), f"is {message['name']!r}; expected one of the functions "
                               f"the assistant called: {', '.join(map(str, open_calls))}"))
            for key in ("tool_call_id", "name"):
                if key in message and not isinstance(message[key], str):
                    errors.append((i, _path("messages", j, key), f"is {_type_name(message[key])}; expected a string"))
            continue
        open_calls = None
        if role != "assistant" or "tool_calls" not in message:
            continue
        calls, open_calls = message["tool_calls"], []
        if not isinstance(calls, list) or not calls:
            errors.append((i, _path("messages", j, "tool_calls"), f"is {calls!r:.40}; expected a non-empty list of calls"))
            continue
        for c, call in enumerate(calls):
            where = ("messages", j, "tool_calls", c)
            function = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping) or call.get("type", "function") != "function":
                errors.append((i, _path(*where), f"is {call!r:.60}; expected {{'type': 'function', 'function': "
                               "{'name': ..., 'arguments': {...}}}"))
                continue
            name = function.get("name")
            open_calls.append(name)
            if name not in names and specs_ok:
                have = f"one of {', '.join(names)}" if names else "a function listed in 'tools' (the record lists none)"
                errors.append((i, _path(*where, "function", "name"), f"is {name!r}, which is not in 'tools'; expected {have}"))
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError as e:
                    errors.append((i, _path(*where, "function", "arguments"), f"is not valid JSON ({e.msg} at character "
                                   f"{e.pos}); expected a JSON object of the function's arguments"))
                    continue
            if not isinstance(arguments, Mapping):
                errors.append((i, _path(*where, "function", "arguments"), f"is {_type_name(arguments)} {arguments!r:.40}; "
                               "expected an object (a dict or a JSON object string) of the function's arguments"))
    if require_assistant_last and messages and isinstance(messages[-1], Mapping) and messages[-1].get("role") == TOOL_ROLE:
        errors.append((i, _path("messages", len(messages) - 1, "role"), "is 'tool'; expected the last turn to be "
                       "'assistant', the training target (pass require_assistant_last=False for prompts)"))


def _check_turn_order(errors: list, i: int, roles: list[tuple[str, int, str]], *, require_user: bool,
                      require_assistant_last: bool, sharegpt: bool = False) -> None:
    """``roles``: (field, index, role) of a whole conversation, e.g. a preference prompt followed by its answer.
    ``sharegpt``: the roles came from ShareGPT's ``from`` values, and messages name those (human, gpt)."""
    key, name = ("from", {v: k for k, v in SHAREGPT_ROLES.items()}) if sharegpt else ("role", {r: r for r in ROLES})
    for k, (field, j, role) in enumerate(roles):
        if role == "system" and k > 0:
            errors.append((i, _path(field, j, key), "is 'system' after the first message; expected system only first"))
            return
    turns = roles[1:] if roles[0][2] == "system" else roles
    for k, (field, j, role) in enumerate(turns):
        expected = "user" if k % 2 == 0 else "assistant"
        if role != expected:
            after = f" after {name[turns[k - 1][2]]!r}" if k else " as the first turn"
            errors.append((i, _path(field, j, key), f"is {name[role]!r}{after}; expected turns to alternate "
                           f"{name['user']}, {name['assistant']}, {name['user']}, ... starting with {name['user']}"))
            return
    if require_user and not any(role == "user" for _, _, role in turns):
        errors.append((i, repr(roles[0][0]), f"has no {name['user']} turn; expected at least one "
                       "(pass require_user=False to allow)"))
    if require_assistant_last and (not turns or turns[-1][2] != "assistant"):
        field, j, role = roles[-1]
        errors.append((i, _path(field, j, key), f"is {name[role]!r}; expected the last turn to be "
                       f"{name['assistant']!r}, the training target (pass require_assistant_last=False for prompts)"))


def _render(record: Mapping, fmt: str, tokenizer) -> list[int]:
    from labkit.data.masks import tokenize_example

    if fmt == "text":
        return tokenizer(record["text"])["input_ids"]
    if fmt == "preference":
        longest = max((record["chosen"], record["rejected"]), key=lambda r: len(str(r)))
        record = {"prompt": record["prompt"], "completion": longest}
        fmt = "completion"
    if fmt == "kto":
        record, fmt = {"prompt": record["prompt"], "completion": record["completion"]}, "completion"
    if fmt == "sharegpt":
        record, fmt = to_chat(record), "chat"
    if fmt == "chat" and uses_tools(record):  # no loss mask is needed here: only the length is counted
        chat = to_chat(record)
        return tokenizer.apply_chat_template(chat["messages"], tools=chat.get("tools"), tokenize=True,
                                             return_dict=True)["input_ids"]
    return tokenize_example(record, tokenizer, fmt)["input_ids"]


def _unrendered_tool_keys(record: Mapping, tokenizer) -> list[str]:
    """The tool keys a chat record uses (``tools``, ``tool_calls``) that ``tokenizer``'s chat template never mentions."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    used = ["tools"] * ("tools" in record) + ["tool_calls"] * any(
        isinstance(m, Mapping) and "tool_calls" in m for m in record.get("messages", []))
    return [key for key in used if key not in template]


def find_errors(
    records: Sequence[Mapping], fmt: str, *, require_user: bool = True, require_assistant_last: bool = True,
    allow_extra: bool | Collection[str] = False, tokenizer=None, max_tokens: int | None = None,
) -> list[ErrorEntry]:
    """Every problem in ``records`` as (record index, field path, message); empty for a clean dataset.

    The defaults are the requirements for training: a chat has a user turn and ends with an assistant
    turn; no field beyond the format's own (``allow_extra`` names the extra fields to keep, or True);
    with a ``tokenizer`` and ``max_tokens``, no example longer than ``max_tokens`` tokens. A chat may carry
    ``tools`` and tool calls (``labkit.data.formats.TOOL_MESSAGE_KEYS``); each call must name a function in
    ``tools`` with an object of arguments, each ``tool`` message must answer a call, and the tokenizer's chat
    template must render them.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if (tokenizer is None) != (max_tokens is None):
        raise ValueError("pass both tokenizer and max_tokens to check lengths, or neither")
    errors: list[ErrorEntry] = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            errors.append((i, "", f"is {_type_name(record)}; expected a dict of fields ({', '.join(FIELDS[fmt])})"))
            continue
        before = len(errors)
        _check_fields(errors, i, record, fmt, allow_extra)
        conversations: dict[str, list] = {}
        for field in FIELDS[fmt]:
            if field not in record:
                continue
            value = record[field]
            if fmt == "sharegpt":
                roles = _check_sharegpt(errors, i, value, allow_extra)
                if roles is not None:
                    conversations["messages"] = roles
            elif field == "label":
                if not isinstance(value, bool):
                    errors.append((i, "'label'", f"is {_type_name(value)} {value!r:.40}; expected true (desirable) or false"))
            elif fmt == "chat" or (fmt in ("completion", "preference", "kto") and isinstance(value, list)):
                roles = _check_messages(errors, i, field, value, allow_extra, tools=fmt == "chat")
                if roles is not None:
                    conversations[field] = roles
            else:
                _check_text(errors, i, repr(field), value, allow_empty=field == "input")
        if fmt == "chat" and uses_tools(record):
            _check_tool_use(errors, i, record, allow_extra=allow_extra, require_assistant_last=require_assistant_last)
        answers = [f for f in ("messages", "completion", "chosen", "rejected") if f in conversations]
        for field in answers:  # a conversational answer continues its prompt: check the order of both together
            roles = conversations.get("prompt", []) + conversations[field]
            _check_turn_order(errors, i, roles, require_user=require_user, require_assistant_last=require_assistant_last,
                              sharegpt=fmt == "sharegpt")
        if fmt == "preference" and all(f in record for f in FIELDS[fmt]) and record["chosen"] == record["rejected"]:
            errors.append((i, "'rejected'", "is identical to 'chosen'; expected two different answers"))
        unrendered = _unrendered_tool_keys(record, tokenizer) if fmt == "chat" and tokenizer is not None else []
        if unrendered and len(errors) == before:
            errors.append((i, "", f"uses {' and '.join(unrendered)}, but the tokenizer's chat template never reads them, so "
                           "training would silently drop them; expected a chat template that renders tools (e.g. Qwen2.5's)"))
        if tokenizer is not None and len(errors) == before:
            n_tokens = len(_render(record, fmt, tokenizer))
            if n_tokens > max_tokens:
                errors.append((i, "", f"has {n_tokens} tokens; expected at most {max_tokens} (max_tokens). "
                               "Truncating it would cut off its answer: drop it, shorten it or raise max_tokens"))
    return errors


def validate(records: Sequence[Mapping], fmt: str, **options) -> None:
    """None for a clean dataset; otherwise one ``DataFormatError`` listing every bad record. Options: ``find_errors``."""
    errors = find_errors(records, fmt, **options)
    if errors:
        raise DataFormatError(errors, n_records=len(records))


def drop_invalid(records: Sequence[Mapping], fmt: str, **options) -> tuple[list, list[ErrorEntry]]:
    """(the valid records, the problems of those dropped): for a caller who chooses to drop rather than fix."""
    errors = find_errors(records, fmt, **options)
    bad = {e[0] for e in errors}
    return [r for i, r in enumerate(records) if i not in bad], errors
