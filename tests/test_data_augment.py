"""WordNet synonym replacement: the table is read correctly, replacement is seeded, protected words stay."""

import pytest

from labkit.data.augment import (SYNONYMS_FILE, WORDNET_DIR, augment_chat, build_synonyms, load_synonyms,
                                 synonym_replace)

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n"
DATA = {  # two synsets in WordNet's data-file layout: offset lex_filenum pos w_cnt(hex) [word lex_id]... p_cnt ...
    "verb": "00640846 31 v 02 add 0 add_together 0 001 @ 00637277 v 0000 | make an addition\n"
            "00182406 30 v 03 add 0 total 0 ADD 0 000 | combine\n",
    "noun": "06286395 10 n 02 word 0 news 0 000 | a unit of language\n",
    "adj": "", "adv": "",
}


@pytest.fixture
def fake_wordnet(tmp_path):
    for pos, body in DATA.items():
        (tmp_path / f"data.{pos}").write_text(HEADER + body, encoding="latin-1")
    return tmp_path


def test_build_synonyms_reads_wordnet_data_files(fake_wordnet):
    table = build_synonyms(["add", "word", "missing"], fake_wordnet)
    assert table == {"add": ["total"], "word": ["news"]}  # multi-word lemmas and acronyms (ADD) are left out


def test_replacement_is_seeded_and_respects_rate_and_protect():
    table = {"add": ["total"], "numbers": [], "two": ["deuce"]}
    text = "Add the two numbers."
    assert synonym_replace(text, 0.0, synonyms=table) == text
    assert synonym_replace(text, 1.0, synonyms=table) == "Total the deuce numbers."
    assert synonym_replace(text, 1.0, synonyms=table, protect=["add"]) == "Add the deuce numbers."
    assert synonym_replace("letters", 1.0, synonyms={"letter": ["missive"]}) == "missives"
    shipped = [synonym_replace("Reverse the letters of the word.", 0.5, seed=s) for s in range(6)]
    assert shipped == [synonym_replace("Reverse the letters of the word.", 0.5, seed=s) for s in range(6)]
    assert len(set(shipped)) > 1


def test_first_line_only_keeps_the_task_input():
    record = {"messages": [{"role": "user", "content": "Reverse the letters of the word.\nreverse"},
                           {"role": "assistant", "content": "esrever"}]}
    table = {"reverse": ["invert"], "word": ["news"]}
    safe = augment_chat([record], 1.0, first_line_only=True, synonyms=table)[0]
    unsafe = augment_chat([record], 1.0, synonyms=table)[0]
    assert safe["messages"][0]["content"] == "Invert the letters of the news.\nreverse"
    assert unsafe["messages"][0]["content"].endswith("\ninvert")  # the answer "esrever" is now wrong
    assert safe["messages"][1] == record["messages"][1]


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").exists(), reason="Debian's wordnet-base is not installed")
def test_shipped_table_matches_wordnet():
    shipped = load_synonyms(SYNONYMS_FILE)
    rebuilt = build_synonyms(shipped)
    assert {w: tuple(s) for w, s in rebuilt.items()} == shipped
