"""Offline task data: verifiable instructions, preference pairs, unpaired labels and passkey retrieval.

Every generator is deterministic in its ``seed`` and returns a ``datasets.Dataset`` whose columns
follow TRL's dataset formats, so the same rows train the embedded model on a CPU and a hub model
on a GPU. Train, validation and test never share an input: each input belongs to one split by a stable hash
(:func:`split_of`); tune on ``validation``, report ``test``.

Tasks (each answer is exact, so generations can be scored by string match):

=========  ==============================================  ===================
task       example input                                    answer
=========  ==============================================  ===================
add        ``47 + 38``                                       ``85``
reverse    ``socket``                                        ``tekcos``
sort       ``pickle, array, zlib``                           ``array, pickle, zlib``
module     ``urlsplit``                                      ``urllib.parse``
flip       ``pickle, array, zlib``                           ``zlib, array, pickle``
first      ``pickle, array, zlib``                           ``pickle``
last       ``pickle, array, zlib``                           ``zlib``
rotate     ``pickle, array, zlib``                           ``array, zlib, pickle``
upper      ``socket``                                        ``SOCKET``
=========  ==============================================  ===================

The tasks differ in what they ask of a model that reads BPE tokens: ``flip`` moves whole tokens
(learnable in a couple of hundred steps by labkit's 4.5M-parameter model), ``reverse`` needs the
letters inside tokens (far harder at that size), ``module`` is recall of pretraining knowledge.
The first five are :data:`TASKS`, the default everywhere a task list is optional; ``first``, ``last``,
``rotate`` and ``upper`` (:data:`WORD_TASKS`) are more operations on the same inputs, for studying several
tasks at once (``upper``, like ``reverse``, works on the letters inside tokens; the word-list ones move whole
tokens). ``flip``, ``first``, ``last`` and ``rotate`` read the same three-word lists and share their
split: a set of words is in one split for all four, so no task's test input is another task's training input.
"""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from datasets import Dataset

from labkit.corpus import Document, stable_bucket
from labkit.paths import DEFINITIONS_FILE, WORDS_FILE

TASKS = ("add", "reverse", "sort", "module", "flip")
"""The default tasks."""
WORD_TASKS = ("first", "last", "rotate", "upper")
"""More tasks on the same word inputs: pick the first or the last of three words, move the first to the end,
upper-case a word."""
ALL_TASKS = TASKS + WORD_TASKS
FORMATS = ("chat", "alpaca", "completion")
SPLITS = ("train", "validation", "test")
"""Every input belongs to one split by a stable hash: 2 in 10 buckets are test, 1 in 10 validation."""
SPLIT_BUCKETS = 10


@dataclass(frozen=True)
class Example:
    task: str
    instruction: str
    input: str
    answer: str

    @property
    def prompt(self) -> str:
        """The user's turn: instruction, newline, input."""
        return f"{self.instruction}\n{self.input}"


@cache
def _words() -> tuple[str, ...]:
    return tuple(WORDS_FILE.read_text().split())


@cache
def _definitions() -> dict[str, str]:
    return json.loads(DEFINITIONS_FILE.read_text())


def split_of(key: str) -> str:
    """The split an input belongs to: ``test`` (buckets 0 and 5), ``validation`` (bucket 1) or ``train``."""
    bucket = stable_bucket(key, SPLIT_BUCKETS)
    return "test" if bucket % 5 == 0 else "validation" if bucket == 1 else "train"


def _in_split(key: str, split: str) -> bool:
    return split_of(key) == split


def _pool(items: Sequence[str], split: str) -> list[str]:
    return [x for x in items if _in_split(x, split)]


def _add(rng: random.Random, split: str) -> Example:
    while True:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if _in_split(f"{a}+{b}", split):
            return Example("add", "Add the two numbers.", f"{a} + {b}", str(a + b))


def _reverse(rng: random.Random, split: str) -> Example:
    word = rng.choice(_pool(_words(), split))
    return Example("reverse", "Reverse the letters of the word.", word, word[::-1])


def _sort(rng: random.Random, split: str) -> Example:
    while True:
        words = rng.sample(_words(), 3)
        if _in_split(",".join(sorted(words)), split):
            return Example("sort", "Sort the words alphabetically.", ", ".join(words), ", ".join(sorted(words)))


def _word_list(rng: random.Random, split: str) -> list[str]:
    """Three words whose set belongs to ``split``: the same words, in any order, stay in one split."""
    while True:
        words = rng.sample(_words(), 3)
        if _in_split(",".join(sorted(words)), split):
            return words


def _flip(rng: random.Random, split: str) -> Example:
    words = _word_list(rng, split)
    return Example("flip", "Reverse the order of the words.", ", ".join(words), ", ".join(words[::-1]))


def _first(rng: random.Random, split: str) -> Example:
    words = _word_list(rng, split)
    return Example("first", "Give the first word.", ", ".join(words), words[0])


def _last(rng: random.Random, split: str) -> Example:
    words = _word_list(rng, split)
    return Example("last", "Give the last word.", ", ".join(words), words[-1])


def _rotate(rng: random.Random, split: str) -> Example:
    words = _word_list(rng, split)
    return Example("rotate", "Move the first word to the end.", ", ".join(words), ", ".join(words[1:] + words[:1]))


def _upper(rng: random.Random, split: str) -> Example:
    word = rng.choice(_pool(_words(), split))
    return Example("upper", "Write the word in capital letters.", word, word.upper())


def _module(rng: random.Random, split: str) -> Example:
    name = rng.choice(_pool(sorted(_definitions()), split))
    return Example("module", "Name the standard-library module that defines it.", name, _definitions()[name])


_GENERATORS: dict[str, Callable[[random.Random, str], Example]] = {
    "add": _add, "reverse": _reverse, "sort": _sort, "module": _module, "flip": _flip,
    "first": _first, "last": _last, "rotate": _rotate, "upper": _upper,
}


def _check(tasks: Sequence[str], split: str, n_per_task: int) -> None:
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected some of {ALL_TASKS}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n_per_task < 1:
        raise ValueError(f"n_per_task must be >= 1, got {n_per_task}")


def examples(n_per_task: int, *, seed: int = 0, split: str = "train", tasks: Sequence[str] = TASKS) -> list[Example]:
    """``n_per_task`` examples of each task, interleaved (task order repeats), deterministic in ``seed``."""
    _check(tasks, split, n_per_task)
    rngs = {t: random.Random(f"{seed}:{split}:{t}") for t in tasks}
    return [_GENERATORS[t](rngs[t], split) for _ in range(n_per_task) for t in tasks]


def completion_prompt(ex: Example) -> str:
    """The plain-text prompt for base models; the answer follows after a space."""
    return f"{ex.instruction}\n{ex.input}\nAnswer:"


def _format(ex: Example, fmt: str) -> dict:
    base = {"task": ex.task, "answer": ex.answer}
    if fmt == "chat":
        return base | {"messages": [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.answer}]}
    if fmt == "alpaca":
        return base | {"instruction": ex.instruction, "input": ex.input, "output": ex.answer}
    # The space starts the completion, not the prompt: BPE merges " 85" into one piece, so a
    # prompt ending in a space would make the model predict a token it never saw in pretraining.
    return base | {"prompt": completion_prompt(ex), "completion": f" {ex.answer}"}


def verifiable_tasks(
    n_per_task: int, *, seed: int = 0, split: str = "train", fmt: str = "chat", tasks: Sequence[str] = TASKS
) -> Dataset:
    """Instruction data with exact answers.

    Columns: ``task``, ``answer`` and, by ``fmt``:
    ``chat`` -> ``messages`` (user, assistant); ``alpaca`` -> ``instruction``, ``input``, ``output``;
    ``completion`` -> ``prompt``, ``completion`` (TRL's prompt-completion format).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return Dataset.from_list([_format(ex, fmt) for ex in examples(n_per_task, seed=seed, split=split, tasks=tasks)])


def wrong_answer(ex: Example, rng: random.Random) -> str:
    """A plausible but wrong answer: the kind of mistake a weak model makes."""
    if ex.task == "add":
        return str(int(ex.answer) + rng.choice([-10, -1, 1, 10]))
    if ex.task == "reverse":
        if len(set(ex.input)) > 1 and rng.random() < 0.5:
            return ex.input if ex.input != ex.answer else ex.answer[1:] + ex.answer[0]
        letters = list(ex.answer)
        i = rng.randrange(len(letters) - 1)
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
        wrong = "".join(letters)
        return wrong if wrong != ex.answer else ex.answer + ex.answer[-1]
    if ex.task in ("sort", "flip", "rotate"):
        words = ex.answer.split(", ")
        words[0], words[1] = words[1], words[0]
        return ", ".join(words)
    if ex.task in ("first", "last"):  # another word of the list
        return rng.choice([w for w in ex.input.split(", ") if w != ex.answer])
    if ex.task == "upper":  # one letter left in lower case (the words are all letters)
        i = rng.randrange(len(ex.answer))
        return ex.answer[:i] + ex.answer[i].lower() + ex.answer[i + 1:]
    others = sorted(set(_definitions().values()) - {ex.answer})
    return rng.choice(others)


def _prompt_in(ex: Example, fmt: str):
    return [{"role": "user", "content": ex.prompt}] if fmt == "chat" else completion_prompt(ex)


def _response_in(text: str, fmt: str):
    return [{"role": "assistant", "content": text}] if fmt == "chat" else f" {text}"


def preference_pairs(
    n_per_task: int, *, seed: int = 0, split: str = "train", fmt: str = "chat", tasks: Sequence[str] = TASKS
) -> Dataset:
    """Columns ``task``, ``prompt``, ``chosen`` (the exact answer), ``rejected`` (a near miss).

    ``fmt="chat"`` gives TRL's conversational preference format (lists of messages);
    ``fmt="completion"`` the standard one (strings).
    """
    if fmt not in ("chat", "completion"):
        raise ValueError(f"fmt must be 'chat' or 'completion', got {fmt!r}")
    rng = random.Random(f"{seed}:{split}:rejected")
    rows = []
    for ex in examples(n_per_task, seed=seed, split=split, tasks=tasks):
        rows.append({"task": ex.task, "prompt": _prompt_in(ex, fmt), "chosen": _response_in(ex.answer, fmt),
                     "rejected": _response_in(wrong_answer(ex, rng), fmt)})
    return Dataset.from_list(rows)


def unpaired_preferences(
    n_per_task: int, *, seed: int = 0, split: str = "train", fmt: str = "chat", tasks: Sequence[str] = TASKS,
    desirable_fraction: float = 0.5,
) -> Dataset:
    """Columns ``task``, ``prompt``, ``completion``, ``label`` (True = desirable): TRL's KTO format."""
    if not 0 <= desirable_fraction <= 1:
        raise ValueError(f"desirable_fraction must be in [0, 1], got {desirable_fraction}")
    if fmt not in ("chat", "completion"):
        raise ValueError(f"fmt must be 'chat' or 'completion', got {fmt!r}")
    rng = random.Random(f"{seed}:{split}:unpaired")
    rows = []
    for ex in examples(n_per_task, seed=seed, split=split, tasks=tasks):
        good = rng.random() < desirable_fraction
        text = ex.answer if good else wrong_answer(ex, rng)
        rows.append({"task": ex.task, "prompt": _prompt_in(ex, fmt), "completion": _response_in(text, fmt), "label": good})
    return Dataset.from_list(rows)


_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def passkey(n: int, *, seed: int = 0, filler_repeats: int = 10, tokenizer=None, context_tokens: int | None = None) -> Dataset:
    """Long-context retrieval: a 5-digit pass key hidden at a random depth in filler text.

    The format follows Mohtashami & Jaggi (2023), "Landmark Attention". Give ``filler_repeats``
    directly, or a ``tokenizer`` and ``context_tokens`` to size each prompt to about that many
    tokens. Columns: ``prompt``, ``answer`` (the key, as digits), ``depth`` (0 = start, 1 = end),
    ``n_tokens`` (prompt length in tokens; -1 without a tokenizer).
    """
    if (tokenizer is None) != (context_tokens is None):
        raise ValueError("pass both tokenizer and context_tokens, or neither")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(f"{seed}:passkey")
    head = "There is a pass key hidden in this text. Find it and remember it.\n"
    tail = "What is the pass key? The pass key is"
    if tokenizer is not None:
        overhead = len(tokenizer(head + tail + " The pass key is 12345. Remember it. 12345 is the pass key.\n")["input_ids"])
        per_filler = len(tokenizer(_FILLER * 8)["input_ids"]) / 8
        filler_repeats = max(1, round((context_tokens - overhead) / per_filler))
    if filler_repeats < 1:
        raise ValueError(f"filler_repeats must be >= 1, got {filler_repeats}")
    rows = []
    for _ in range(n):
        key = str(rng.randint(10000, 99999))
        before = rng.randint(0, filler_repeats)
        needle = f"The pass key is {key}. Remember it. {key} is the pass key.\n"
        prompt = head + _FILLER * before + needle + _FILLER * (filler_repeats - before) + tail
        n_tokens = len(tokenizer(prompt)["input_ids"]) if tokenizer is not None else -1
        rows.append({"prompt": prompt, "answer": key, "depth": before / filler_repeats, "n_tokens": n_tokens})
    return Dataset.from_list(rows)


_UNTAUGHT_PACKAGES = ("idlelib", "tkinter", "distutils", "turtledemo", "pydoc_data", "ensurepip", "ctypes.macholib")


def write_task_assets(docs: list[Document]) -> None:
    """Ship what the task generators draw from, so tasks are identical on every Python version.

    * ``words.txt``: lowercase words of 4-8 letters used at least 5 times in the prose documents;
    * ``stdlib_definitions.json``: public top-level functions and classes (names of 6+ characters)
      defined in exactly one taught module, mapped to that module.
    """
    import re
    from collections import Counter

    prose = Counter(w for d in docs if d.kind != "source" for w in re.findall(r"\b[a-z]{4,8}\b", d.text))
    words = sorted(w for w, c in prose.items() if c >= 5)
    WORDS_FILE.write_text("\n".join(words) + "\n")

    owners: dict[str, set[str]] = {}
    for d in docs:
        if d.kind != "source":
            continue
        module = d.group
        if any(part.startswith("_") for part in module.split(".")) or module.startswith(_UNTAUGHT_PACKAGES):
            continue
        for node in ast.parse(d.text).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") and len(node.name) >= 6:
                owners.setdefault(node.name, set()).add(module)
    unique = {name: mods.pop() for name, mods in sorted(owners.items()) if len(mods) == 1}
    DEFINITIONS_FILE.write_text(json.dumps(unique, indent=0, sort_keys=True) + "\n")
