"""Tokenize a record for training, with labels of -100 on every token the loss must skip (the prompt)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from labkit.data.formats import to_chat
from labkit.tokenizer import IM_END

IGNORE_INDEX = -100
"""The label PyTorch's cross-entropy (and so every Trainer) leaves out of the loss."""


def _render(tokenizer, messages: Sequence[Mapping], **kwargs) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, **kwargs)


def turn_end_token(tokenizer) -> str:
    """The token that ends an assistant turn: ChatML's ``<|im_end|>`` when the tokenizer knows it, else its EOS."""
    return IM_END if IM_END in tokenizer.get_vocab() else tokenizer.eos_token


def assistant_spans(tokenizer, messages: Sequence[Mapping], end_of_turn: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character spans of every assistant reply including its end-of-turn marker).

    Works for any chat template that renders a prefix of the conversation as a prefix of the text:
    each reply starts where the conversation so far, rendered with the generation prompt, ends.
    ``end_of_turn`` defaults to ``<|im_end|>`` (ChatML) when the tokenizer knows it, else EOS.
    """
    if end_of_turn is None:
        end_of_turn = turn_end_token(tokenizer)
    text = _render(tokenizer, messages)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:k], add_generation_prompt=True)
        if not text.startswith(prefix) or text[len(prefix):len(prefix) + len(message["content"])] != message["content"]:
            raise ValueError(f"the chat template does not render message {k} after its prefix; cannot locate the reply")
        start = len(prefix)
        end = start + len(message["content"])
        if end_of_turn and text.startswith(end_of_turn, end):
            end += len(end_of_turn)  # the model must learn to stop
        spans.append((start, end))
    return text, spans


def _chat_example(tokenizer, messages: Sequence[Mapping], mask_prompt: bool) -> dict:
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if not mask_prompt:
        return {"input_ids": ids, "labels": list(ids)}
    labels = [tok if any(s <= a and b <= e for s, e in spans) else IGNORE_INDEX
              for tok, (a, b) in zip(ids, enc["offset_mapping"])]
    return {"input_ids": ids, "labels": labels}


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _completion_example(tokenizer, prompt, completion, mask_prompt: bool) -> dict:
    if isinstance(prompt, list):
        prompt_ids = tokenizer(_render(tokenizer, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        ids = tokenizer(_render(tokenizer, prompt + completion), add_special_tokens=False)["input_ids"]
    else:
        if not completion.endswith(tokenizer.eos_token):
            completion = completion + tokenizer.eos_token  # without EOS the model never learns to stop
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    # BPE may merge across the prompt/completion boundary; the completion starts where the two diverge
    n_prompt = _common_prefix(prompt_ids, ids) if mask_prompt else 0
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + list(ids[n_prompt:])}


def tokenize_example(record: Mapping, tokenizer, fmt: str, *, mask_prompt: bool = True) -> dict:
    """``{"input_ids", "labels"}`` for one record.

    * ``chat`` and ``alpaca`` (rendered as a chat): labels only on assistant replies and their
      end-of-turn token -- TRL's ``assistant_only_loss=True``;
    * ``completion``: labels only on the completion and the EOS appended to it -- TRL's
      ``completion_only_loss``.

    ``mask_prompt=False`` trains on every token instead.
    """
    if fmt in ("chat", "alpaca"):
        return _chat_example(tokenizer, to_chat(record)["messages"], mask_prompt)
    if fmt == "completion":
        return _completion_example(tokenizer, record["prompt"], record["completion"], mask_prompt)
    raise ValueError(f"fmt must be chat, alpaca or completion; got {fmt!r}")


def tokenize_dataset(records: Sequence[Mapping], tokenizer, fmt: str, *, mask_prompt: bool = True):
    """A ``datasets.Dataset`` with ``input_ids`` and ``labels``: ready for TRL with ``skip_prepare_dataset`` or for packing."""
    from datasets import Dataset

    rows = [tokenize_example(r, tokenizer, fmt, mask_prompt=mask_prompt) for r in records]
    return Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})


def trained_fraction(labels: Sequence[int]) -> float:
    """Share of tokens that carry loss."""
    return sum(label != IGNORE_INDEX for label in labels) / max(1, len(labels))
