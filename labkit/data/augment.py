"""Offline augmentation: WordNet synonym replacement from a table shipped with labkit (built from Debian's ``wordnet-base``)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Collection, Iterable
from functools import cache
from pathlib import Path

from labkit.paths import SYNONYMS_FILE

# SYNONYMS_FILE holds ``{"notice": WordNet's licence, "synonyms": {word: [synonyms]}}`` for the words of labkit's tasks (``write_synonyms``).
WORDNET_DIR = Path("/usr/share/wordnet")
"""Where Debian's ``wordnet-base`` package puts the WordNet 3.0 database."""

_WORD = re.compile(r"[A-Za-z]+")


def read_wordnet_synsets(wordnet_dir: str | Path = WORDNET_DIR) -> list[list[str]]:
    """Every WordNet synset as its list of single-word, lower-case lemmas, read from the ``data.*`` files."""
    synsets = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (Path(wordnet_dir) / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue  # the licence header
            fields = line.split()
            n_words = int(fields[3], 16)
            lemmas = [re.sub(r"\(.*\)$", "", w) for w in fields[4:4 + 2 * n_words:2]]
            synsets.append([w for w in lemmas if w.isalpha() and w.islower()])  # no names, no acronyms (ADD, ADHD)
    return synsets


def build_synonyms(words: Iterable[str], wordnet_dir: str | Path = WORDNET_DIR) -> dict[str, list[str]]:
    """``{word: sorted synonyms}`` over all senses of each of ``words`` that WordNet knows (no sense disambiguation)."""
    wanted = {w.lower() for w in words}
    table: dict[str, set[str]] = {}
    for lemmas in read_wordnet_synsets(wordnet_dir):
        for w in set(lemmas) & wanted:
            table.setdefault(w, set()).update(x for x in lemmas if x != w)
    return {w: sorted(s) for w, s in sorted(table.items()) if s}


def wordnet_notice(copyright_file: str | Path = "/usr/share/doc/wordnet-base/copyright") -> str:
    """The WordNet 3.0 licence text, which must travel with every copy of (derivatives of) the database."""
    text = Path(copyright_file).read_text()
    block = text.split("License: WordNet3.0\n", 1)[1].split("\n\n", 1)[0]
    return "\n".join("" if line.strip() == "." else line.strip() for line in block.splitlines())


def write_synonyms(path: Path = SYNONYMS_FILE, wordnet_dir: str | Path = WORDNET_DIR) -> dict[str, list[str]]:
    """Rebuild the shipped table for the words of ``labkit.tasks`` (its word list and instructions), with WordNet's notice."""
    from labkit.tasks import TASKS, _words, examples

    instructions = {ex.instruction for ex in examples(1, tasks=TASKS)}
    words = set(_words()) | {w.lower() for text in instructions for w in _WORD.findall(text)}
    table = build_synonyms(words, wordnet_dir)
    shipped = {"source": "WordNet 3.0 (Debian package wordnet-base 1:3.0-37), via labkit.data.augment.write_synonyms",
               "notice": wordnet_notice(), "synonyms": table}
    path.write_text(json.dumps(shipped, indent=0) + "\n")
    return table


@cache
def load_synonyms(path: Path = SYNONYMS_FILE) -> dict[str, tuple[str, ...]]:
    return {w: tuple(s) for w, s in json.loads(Path(path).read_text())["synonyms"].items()}


def _synonym_of(word: str, table, rng: random.Random) -> str | None:
    lower = word.lower()
    plural = lower not in table and lower.endswith("s") and lower[:-1] in table
    choices = table.get(lower[:-1] if plural else lower)
    if not choices:
        return None
    new = rng.choice(choices) + ("s" if plural else "")
    return new.capitalize() if word[0].isupper() else new


def synonym_replace(text: str, rate: float, *, seed: int | str = 0, protect: Collection[str] = (),
                    synonyms: dict | None = None) -> str:
    """Replace each word that has a WordNet synonym with probability ``rate``; words in ``protect`` stay.

    Deterministic in ``seed`` (a string seed such as ``"3:17"`` gives each record its own stream).
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    table = load_synonyms() if synonyms is None else synonyms
    rng = random.Random(seed)
    keep = {w.lower() for w in protect}

    def swap(m: re.Match) -> str:
        word = m.group(0)
        if word.lower() in keep or rng.random() >= rate:
            return word
        return _synonym_of(word, table, rng) or word

    return _WORD.sub(swap, text)


def augment_chat(records: Iterable[dict], rate: float, *, seed: int = 0, roles: Collection[str] = ("user",),
                 first_line_only: bool = False, synonyms: dict | None = None) -> list[dict]:
    """A synonym-replaced copy of each chat record. ``first_line_only`` touches only the instruction line of each
    turn, leaving the task input (a word to reverse, words to sort) intact; without it the label may become wrong."""
    out = []
    for i, record in enumerate(records):
        messages = []
        for j, m in enumerate(record["messages"]):
            content = m["content"]
            if m["role"] in roles:
                head, sep, tail = content.partition("\n") if first_line_only else (content, "", "")
                content = synonym_replace(head, rate, seed=f"{seed}:{i}:{j}", synonyms=synonyms) + sep + tail
            messages.append({"role": m["role"], "content": content})
        out.append({**record, "messages": messages})
    return out
