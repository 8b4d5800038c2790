import pytest

from labkit.eval.diversity import distinct_ngram_ratio, known_word_ratio, word_vocabulary, words


@pytest.mark.parametrize("ids, n, expected", [([1, 2, 3, 4], 2, 1.0), ([1, 1, 1, 1, 1], 2, 0.25), ([1, 2, 1, 2, 1], 2, 0.5), ([5, 5], 1, 0.5)])
def test_distinct_ngram_ratio(ids, n, expected):
    assert distinct_ngram_ratio(ids, n) == expected


@pytest.mark.parametrize("text, expected", [("read_config path", 1.0), ("readConfig zzqx", 2 / 3), ("HTTPServer", 0.5)])
def test_known_word_ratio_splits_identifiers(text, expected):
    assert known_word_ratio(text, {"read", "config", "path", "http"}) == pytest.approx(expected)


def test_degenerate_inputs():
    with pytest.raises(ValueError, match="has no 3-gram"):
        distinct_ngram_ratio([1, 2], 3)
    assert known_word_ratio("123 !!\n\n", {"a"}) == 0.0


def test_words_and_vocabulary():
    assert words("def read_config(path): HTTPServer x") == ["def", "read", "config", "path", "http", "server"]
    assert word_vocabulary(["a cat", "the Cat sat"]) == {"cat", "the", "sat"}
