"""Normalisation keeps code intact; each filter removes what it should and says why."""

import ast
import re
import textwrap

import pytest

from labkit.data import QualityFilter, normalize, normalize_text, quality_filter
from labkit.data.quality import ascii_ratio, repetition_ratio
from labkit.data.raw import _code_records

CODE = 'def f(x: dict[str, int]) -> str:\n\tif x["a"] > 1:  # {brackets}: stay\n        return f"{x!r}"\n    return \'\'\n'


def test_normalisation_keeps_every_code_sample_identical_as_python():
    codes = [r["messages"][1]["content"] for r in _code_records()]
    assert len(codes) > 50
    for code in codes:
        messy = "\ufeff" + code.replace("\n", "  \r\n")
        parse = lambda text: ast.dump(ast.parse(textwrap.dedent(text)))  # noqa: E731  (methods are indented)
        assert parse(normalize_text(messy)) == parse(code)


def test_the_popular_punctuation_regex_breaks_code():
    """What the chapter warns about: the 'cleaning' regex leaves code that no longer parses."""
    cleaned = re.sub(r"[^\w\s.,!?]", "", CODE)
    with pytest.raises(SyntaxError):
        ast.parse(cleaned)
    assert normalize_text(CODE) == CODE.rstrip("\n")


@pytest.mark.parametrize("raw, expected", [
    ("cafe\u0301", "caf\u00e9"),                   # NFC composes e + combining accent
    ("a  \r\nb\t \rc", "a\nb\nc"),                 # line ends unified, trailing spaces gone
    ("\n\nx\n\n\n\n  y\n", "x\n\n  y"),           # one blank line at most; indentation kept
    ("zero\u200bwidth\ufeff", "zerowidth"),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_leaves_roles_and_completion_space():
    records = [{"messages": [{"role": "user", "content": "hi  "}, {"role": "assistant", "content": "3"}]},
               {"prompt": "Q\r\nAnswer:", "completion": " 3"}]
    out, report = normalize(records)
    assert out == [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "3"}]},
                   {"prompt": "Q\nAnswer:", "completion": " 3"}]
    assert report.changed == 2 and report.n_out == 2


def test_repetition_and_ascii_ratios():
    assert repetition_ratio("a b c a b c a b c") == pytest.approx(1 - 3 / 7)  # 7 trigrams, 3 distinct
    assert repetition_ratio("one two three four") == 0
    assert ascii_ratio("abcd") == 1 and ascii_ratio("ab\u00e9\u00e9") == 0.5


@pytest.mark.parametrize("text, reason", [
    ("ok", "too short"),
    ("word " * 600, "too long"),
    ("the result is the result " * 20, "repetitive"),
    ("Ð\x9fÑ\x80Ð¸Ð²ÐµÑ\x82 Ð¼Ð¸Ñ\x80 ÐºÐ°Ðº Ð´ÐµÐ»Ð° ÑÐµÐ³Ð¾Ð´Ð½Ñ", "charset"),
    ("Reverse the letters of the word.\nsocket\ntekcos", None),
])
def test_quality_filter_reasons(tokenizer, text, reason):
    records = [{"prompt": "", "completion": text}]
    kept, report = quality_filter(records, tokenizer, QualityFilter(max_tokens=512))
    if reason is None:
        assert kept == records and not report.removed
    else:
        assert kept == [] and report.removed[0][0] == 0 and report.removed[0][1].startswith(reason)


def test_quality_filter_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_tokens"):
        QualityFilter(min_tokens=10, max_tokens=5)
    with pytest.raises(ValueError, match="fractions"):
        QualityFilter(min_ascii=1.5)
