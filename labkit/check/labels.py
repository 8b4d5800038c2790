"""``eos_in_labels``: every training example must end with a labelled end token, or generation never stops."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import torch

from labkit.check.finding import Finding
from labkit.data.masks import IGNORE_INDEX, turn_end_token

_FIXES = {
    "masked as padding": (
        "give the tokenizer a pad token that is not its end token (an added '<|pad|>', or an unused reserved "
        "token), or collate with TRL's DataCollatorForLanguageModeling, which masks padding by position, not by id"),
    "masked": ("label the end token: labkit.data.tokenize_example puts the end-of-turn token inside the "
               "assistant span, as TRL's assistant_only_loss and completion_only_loss do"),
    "missing": ("append tokenizer.eos_token to every completion (labkit.data.tokenize_example does), or render "
                "chats with a template that closes each reply with its end-of-turn token"),
}
_WHY = {
    "masked as padding": "an end token follows it in the input, but its label was masked because pad_token_id == {pad} is "
                         "also the end token's id: a collator that masks padding by token id masks the end token too",
    "masked": "an end token follows it in the input, but with label {ignore} (left out of the loss)",
    "missing": "no end token follows it in the input",
}


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """Ids that end generation: ``model.generation_config.eos_token_id`` (an id or a list) when a model is given,
    else the tokenizer's EOS and its end-of-turn token (ChatML's ``<|im_end|>`` when it knows it)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is not None:
        return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(turn_end_token(tokenizer))}
    return {i for i in ids if i is not None}


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def token_rows(examples) -> list[tuple[list[int], list[int], list[int]]]:
    """(input_ids, labels, attention_mask) per example from a collated batch ((B, T) tensors), a ``datasets.Dataset``
    or a list of rows; the mask is all ones where none is given."""
    if isinstance(examples, Mapping):
        if "input_ids" not in examples or "labels" not in examples:
            raise ValueError(f"a batch needs 'input_ids' and 'labels'; got keys {sorted(examples)}")
        ids, labels = _as_list(examples["input_ids"]), _as_list(examples["labels"])
        mask = _as_list(examples["attention_mask"]) if "attention_mask" in examples else None
        if ids and not isinstance(ids[0], list):
            ids, labels, mask = [ids], [labels], None if mask is None else [mask]
        masks = mask if mask is not None else [[1] * len(row) for row in ids]
        rows = list(zip(ids, labels, masks))
        return _split_packed(rows, examples["position_ids"]) if "position_ids" in examples else rows
    rows = []
    for k, row in enumerate(examples):
        if "input_ids" not in row or "labels" not in row:
            raise ValueError(f"example {k}: needs 'input_ids' and 'labels' (labkit.data.tokenize_dataset); got keys {sorted(row)}")
        ids = _as_list(row["input_ids"])
        rows.append((ids, _as_list(row["labels"]), _as_list(row["attention_mask"]) if "attention_mask" in row else [1] * len(ids)))
    return rows


def _split_packed(rows: list, position_ids) -> list:
    """Packed rows cut into their examples where ``position_ids`` restart at 0."""
    from labkit.data.packing import example_ids

    positions = position_ids if isinstance(position_ids, torch.Tensor) else torch.tensor(position_ids)
    owners = example_ids(positions.reshape(len(rows), -1)).tolist()
    pieces = []
    for row, owner in zip(rows, owners):
        for e in sorted(set(owner)):
            keep = [i for i, o in enumerate(owner) if o == e]
            pieces.append(tuple([values[i] for i in keep] for values in row))
    return pieces


def _reason(row: tuple, last: int, stops: Collection[int], pad_token_id: int | None) -> str:
    ids, labels, mask = (values[last + 1:] for values in row)
    # an end token the model attends to is text; one it does not is padding (pad_token_id == eos_token_id)
    masked = [t for t, label, m in zip(ids, labels, mask) if t in stops and label == IGNORE_INDEX and m]
    if not masked:
        return "missing"
    return "masked as padding" if masked[0] == pad_token_id else "masked"


def eos_in_labels(examples: Iterable, tokenizer, *, stop_ids: Collection[int] | None = None) -> list[Finding]:
    """Examples whose last labelled token (trailing whitespace aside) is not an end token: trained on them, the
    model never learns to stop.

    ``examples``: tokenized rows with ``input_ids`` and ``labels`` (``labkit.data.tokenize_dataset``) or, better,
    a batch as the collator hands it to the model -- which is where a collator that masks padding by token id
    also masks the end token when ``pad_token_id == eos_token_id``; a packed batch is cut into its examples
    where ``position_ids`` restart. ``stop_ids``: the ids that end generation
    (default :func:`stop_token_ids`). Rows without any labelled token are left to other checks.
    One finding per cause (missing, masked as padding, masked), naming the first example and the count.
    """
    stops = set(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer)
    names = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)!r} (id {i})" for i in sorted(stops))
    rows = token_rows(examples)
    bad: dict[str, list[tuple[int, int]]] = {}
    for k, row in enumerate(rows):
        ids, labels, _ = row
        if len(ids) != len(labels):
            raise ValueError(f"example {k}: {len(ids)} input_ids but {len(labels)} labels; expected one label per token")
        labelled = [p for p, label in enumerate(labels) if label != IGNORE_INDEX]
        while labelled and labels[labelled[-1]] not in stops and not tokenizer.decode([labels[labelled[-1]]]).strip():
            labelled.pop()  # trailing whitespace after the end token (ChatML's newline after <|im_end|>) is harmless
        if labelled and labels[labelled[-1]] not in stops:
            last = labelled[-1]
            bad.setdefault(_reason(row, last, stops, tokenizer.pad_token_id), []).append((k, labels[last]))
    findings = []
    for reason, cases in bad.items():
        k, token = cases[0]
        why = _WHY[reason].format(pad=tokenizer.pad_token_id, ignore=IGNORE_INDEX)
        findings.append(Finding(
            "eos_in_labels", "error",
            f"example {k}: the last labelled token (whitespace aside) is {tokenizer.convert_ids_to_tokens(token)!r} (id {token}), "
            f"expected an end token ({names}); {why}. {len(cases)} of {len(rows)} examples end this way, "
            f"and a model trained on them never learns to stop.",
            _FIXES[reason]))
    return findings
