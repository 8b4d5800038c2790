"""``chat_template_match``: the text a model trained on must begin with the prompt it will be given at inference."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from labkit.check.finding import Finding

CONTEXT_CHARS = 24
"""Characters shown on each side of the first difference."""


def _trained_text(record: Mapping, tokenizer) -> str:
    if "text" in record:
        return record["text"]
    if isinstance(record.get("prompt"), str):
        return record["prompt"] + record["completion"]
    return tokenizer.apply_chat_template(list(record["messages"]), tokenize=False)


def _conversation(record: Mapping) -> list:
    from labkit.data.formats import to_chat

    return list(record["messages"]) if "messages" in record else to_chat(record)["messages"]


def inference_prompt(messages: list, tokenizer) -> str:
    """What ``apply_chat_template(..., add_generation_prompt=True)`` gives for everything before the last reply."""
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return tokenizer.apply_chat_template(messages[:replies[-1]] if replies else messages, tokenize=False,
                                         add_generation_prompt=True)


def first_difference(a: str, b: str) -> int:
    """Index of the first character where ``a`` and ``b`` differ (the shorter length if one begins the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def chat_template_match(records: Iterable[Mapping], tokenizer) -> list[Finding]:
    """Records whose training text does not begin with the inference prompt for the same conversation.

    A record is ``{"messages", "text"}`` (the conversation and the string trained on), a prompt-completion
    record (trained on ``prompt + completion``; its conversation is ``labkit.data.formats.to_chat``'s), or a
    chat alone (trained on ``apply_chat_template(messages)``). The inference prompt is
    ``tokenizer.apply_chat_template(<messages before the last assistant reply>, add_generation_prompt=True)``:
    a model fine-tuned on other framing sees an unfamiliar prompt when deployed. Records with only ``text``
    are skipped (no conversation to compare with). One finding names the first mismatch and the count.
    """
    if not getattr(tokenizer, "chat_template", None):
        return [Finding("chat_template_match", "warning",
                        "the tokenizer has no chat_template, so inference cannot render prompts with apply_chat_template; "
                        "expected the template the model will be served with.",
                        "set tokenizer.chat_template to the serving template before training and render the data with it")]
    mismatched, first, checked = 0, None, 0
    for k, record in enumerate(records):
        if "messages" not in record and not isinstance(record.get("prompt"), str):
            continue
        checked += 1
        trained, prompt = _trained_text(record, tokenizer), inference_prompt(_conversation(record), tokenizer)
        if not trained.startswith(prompt):
            mismatched += 1
            first = first or (k, trained, prompt)
    if first is None:
        return []
    k, trained, prompt = first
    i, lo = first_difference(trained, prompt), max(0, first_difference(trained, prompt) - CONTEXT_CHARS)
    return [Finding(
        "chat_template_match", "error",
        f"record {k}: the training text differs from the inference prompt at character {i}: "
        f"trained on {trained[lo:i + CONTEXT_CHARS]!r}, served {prompt[lo:i + CONTEXT_CHARS]!r} "
        f"(expected the training text to begin with apply_chat_template(..., add_generation_prompt=True)). "
        f"{mismatched} of {checked} records differ.",
        "render the training data with the tokenizer's own chat template (labkit.data.tokenize_dataset with fmt='chat'), "
        "or serve with the framing the model was trained on")]
