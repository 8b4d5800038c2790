"""Quality pipeline: normalise text without breaking code, then filter by length, repetition and charset."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from labkit.data.formats import record_text
from labkit.data.report import StepReport

_INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u2060"), None)
"""BOM, zero-width space, word joiner: invisible, yet they split tokens and defeat exact dedup. (Zero-width
(non-)joiners stay: Persian, Indic scripts and emoji sequences need them.)"""


def normalize_text(text: str) -> str:
    """NFC, ``\\n`` line ends, no invisible characters, no trailing spaces, at most one blank line in a row.

    Leading indentation, tabs, brackets, quotes and colons are left exactly as they are: in code
    they are syntax. (A common recipe's ``re.sub(r"[^\\w\\s.,!?]", "", text)`` deletes them all.)
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").translate(_INVISIBLE)
    lines = [line.rstrip() for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return text.strip("\n")


def _map_strings(value, fn: Callable[[str], str]):
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: (v if k == "role" else _map_strings(v, fn)) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def normalize(records: Sequence[Mapping], fn: Callable[[str], str] = normalize_text) -> tuple[list[dict], StepReport]:
    """Apply ``fn`` to every string of every record (roles untouched; a completion keeps its leading space)."""
    out = [{k: _map_strings(v, fn) for k, v in r.items()} for r in records]
    return out, StepReport("normalize", len(records), changed=sum(a != b for a, b in zip(records, out)))


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of word ``n``-grams that repeat an earlier one: 0 for varied text, near 1 for a loop."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def ascii_ratio(text: str) -> float:
    """Share of characters that are printable ASCII or whitespace: a cheap charset/language check for English and code."""
    if not text:
        return 0.0
    return sum(ch.isascii() and (ch.isprintable() or ch.isspace()) for ch in text) / len(text)


@dataclass
class QualityFilter:
    min_tokens: int = 4
    """Drop examples shorter than this (tokens of the whole record text)."""
    max_tokens: int = 512
    """Drop examples longer than this rather than truncating them (a cut answer teaches a wrong answer)."""
    max_repetition: float = 0.5
    """Drop text whose share of repeated word 3-grams exceeds this."""
    min_ascii: float = 0.9
    """Drop text whose share of ASCII characters is below this (the book's data is English and Python)."""

    def __post_init__(self):
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 0 < min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        if not 0 <= self.max_repetition <= 1 or not 0 <= self.min_ascii <= 1:
            raise ValueError(f"max_repetition and min_ascii are fractions in [0, 1], got {self.max_repetition}, {self.min_ascii}")

    def reason(self, text: str, n_tokens: int) -> str | None:
        """Why a record with this text and token count is dropped, or None to keep it."""
        if n_tokens < self.min_tokens:
            return f"too short: {n_tokens} tokens < {self.min_tokens}"
        if n_tokens > self.max_tokens:
            return f"too long: {n_tokens} tokens > {self.max_tokens}"
        if (rep := repetition_ratio(text)) > self.max_repetition:
            return f"repetitive: {rep:.2f} of 3-grams repeat"
        if (asc := ascii_ratio(text)) < self.min_ascii:
            return f"charset: {asc:.2f} ASCII"
        return None


def quality_filter(records: Sequence[Mapping], tokenizer, config: QualityFilter | None = None,
                   text: Callable[[Mapping], str] = record_text) -> tuple[list[Mapping], StepReport]:
    """Records that pass ``config``, and a report naming the reason for each one dropped."""
    config = config or QualityFilter()
    report = StepReport("quality_filter", len(records))
    kept = []
    for i, record in enumerate(records):
        t = text(record)
        why = config.reason(t, len(tokenizer(t, add_special_tokens=False)["input_ids"]))
        if why:
            report.removed.append((i, why))
        else:
            kept.append(record)
    return kept, report
