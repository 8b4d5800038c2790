"""A raw, messy chat dataset for the "Preparing data" chapter, generated deterministically, with its ground truth.

Clean records come from ``labkit.tasks`` (short exact-answer tasks) and from the held-out stdlib
documents shipped with labkit (code: the source of a function; prose: what a docstring says).
Then the mess real data has is added on purpose: verbatim and cosmetic duplicates, near
duplicates (a few words edited), broken records (every kind ``validate`` reports) and low-quality
text (loops, mojibake, an over-long file). ``truth`` says what was done to each record, so each
pipeline step can be scored.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass

from labkit.corpus import heldout_documents
from labkit.data.dedup import content_hash
from labkit.data.formats import record_text
from labkit.data.quality import normalize_text
from labkit.tasks import examples, verifiable_tasks

INSTRUCTIONS = tuple(sorted({ex.instruction for ex in examples(1)}))


@dataclass(frozen=True)
class Truth:
    origin: int
    """Index of the clean record this one was made from (its own index for a clean record)."""
    defect: str
    """``clean``, ``exact-dup``, ``cosmetic-dup``, ``near-dup``, ``broken:<kind>`` or ``low-quality:<kind>``."""


def _chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _code_records(max_lines: int = 30) -> list[dict]:
    out = []
    for doc in heldout_documents():
        if doc.kind != "source":
            continue
        module = doc.group
        for node in ast.walk(ast.parse(doc.text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and 4 <= node.end_lineno - node.lineno < max_lines:
                code = ast.get_source_segment(doc.text, node, padded=True)
                out.append(_chat(f"Show the source of `{node.name}` from `{module}`.", code))
    return out


def _prose_records(min_chars: int = 200, max_chars: int = 1200) -> list[dict]:
    entries: list[list[str]] = []  # [qualified name, docstring]; a docstring's own paragraphs are blocks too
    for doc in heldout_documents():
        if doc.kind != "docstring":
            continue
        for block in doc.text.split("\n\n"):
            name, _, text = block.partition("\n")
            if re.fullmatch(r"[A-Za-z_][\w.]*", name) and text:
                entries.append([name, text])
            elif entries:
                entries[-1][1] += "\n\n" + block
    return [_chat(f"What does `{name}` do, according to its docstring?", text)
            for name, text in entries if min_chars <= len(text) <= max_chars]


def _edit_words(text: str, fraction: float, rng: random.Random) -> str:
    """Edit about ``fraction`` of the words (delete, duplicate or swap with a neighbour), keeping line structure."""
    lines = [line.split(" ") for line in text.split("\n")]
    slots = [(i, j) for i, line in enumerate(lines) for j in range(len(line)) if line[j]]
    for i, j in rng.sample(slots, max(1, round(fraction * len(slots)))):
        op, words = rng.choice(("delete", "duplicate", "swap")), lines[i]
        if op == "delete":
            words[j] = ""
        elif op == "duplicate":
            words[j] = f"{words[j]} {words[j]}"
        elif j + 1 < len(words):
            words[j], words[j + 1] = words[j + 1], words[j]
    return "\n".join(" ".join(w for w in line if w != "") for line in lines)


def _cosmetic(record: dict, rng: random.Random) -> dict:
    kind = rng.choice(("crlf", "trailing", "zero-width"))
    def fix(s: str) -> str:
        if kind == "crlf":
            return s.replace("\n", "\r\n")
        if kind == "trailing":
            return s.replace("\n", "  \n") + " "
        return "\ufeff" + s.replace(" ", " \u200b", 1)
    return {"messages": [{"role": m["role"], "content": fix(m["content"])} for m in record["messages"]]}


def _broken(record: dict, kind: str) -> object:
    u, a = record["messages"][0]["content"], record["messages"][1]["content"]
    return {
        "misspelled-role": {"messages": [{"role": "user", "content": u}, {"role": "asistant", "content": a}]},
        "no-assistant": {"messages": [{"role": "user", "content": u}]},
        "not-alternating": {"messages": [{"role": "user", "content": u}, {"role": "user", "content": u},
                                         {"role": "assistant", "content": a}]},
        "system-late": {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a},
                                     {"role": "system", "content": "Be brief."}]},
        "empty-answer": {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": "  "}]},
        "non-string": {"messages": [{"role": "user", "content": u},
                                    {"role": "assistant", "content": int(a) if a.isdigit() else [a]}]},
        "replacement-char": {"messages": [{"role": "user", "content": u},
                                          {"role": "assistant", "content": a[:1] + "\ufffd" + a[1:]}]},
        "invalid-utf8": {"messages": [{"role": "user", "content": (u.encode() + b"\xff").decode("utf-8", "surrogateescape")},
                                      {"role": "assistant", "content": a}]},
        "alpaca-record": {"instruction": u.split("\n")[0], "input": u.partition("\n")[2], "output": a},
        "extra-field": {"messages": record["messages"], "source": "scraped"},
        "not-a-dict": [u, a],
    }[kind]


BROKEN_KINDS = ("misspelled-role", "no-assistant", "not-alternating", "system-late", "empty-answer", "non-string",
                "replacement-char", "invalid-utf8", "alpaca-record", "extra-field", "not-a-dict")


def _low_quality(record: dict, kind: str, rng: random.Random, long_text: str) -> dict:
    u = record["messages"][0]["content"]
    if kind == "loop":
        a = " ".join(["the result is the result"] * 30)
    elif kind == "mojibake":
        a = record["messages"][1]["content"].encode("utf-8").decode("latin-1") + " Ã©Ã¨Ã¢â€™" * 20
    elif kind == "too-long":
        a = long_text
    else:  # too-short: a reply of nothing useful
        u, a = "?", "ok"
    return _chat(u, a)


def messy_dataset(n_per_task: int = 60, *, seed: int = 0, dup_rate: float = 0.08, near_rate: float = 0.2,
                  broken_per_kind: int = 2, low_quality_per_kind: int = 3) -> tuple[list, list[Truth]]:
    """(records, truth): clean task, code and prose chats plus duplicates, near duplicates, broken and low-quality records, shuffled."""
    rng = random.Random(f"messy:{seed}")
    candidates = [{"messages": r["messages"]} for r in verifiable_tasks(n_per_task, seed=seed, fmt="chat")]
    candidates += _code_records() + _prose_records()
    clean, seen = [], set()
    for record in candidates:  # the generators repeat themselves; keep the clean base free of duplicates
        h = content_hash(normalize_text(record_text(record)))
        if h not in seen:
            seen.add(h)
            clean.append(record)
    n_tasks = sum(r["messages"][0]["content"].startswith(INSTRUCTIONS) for r in clean)
    records, truth = list(clean), [Truth(i, "clean") for i in range(len(clean))]

    def add(record, origin: int, defect: str) -> None:
        records.append(record)
        truth.append(Truth(origin, defect))

    long_source = max((d.text for d in heldout_documents() if d.kind == "source"), key=len)[:20000]
    for i in rng.sample(range(len(clean)), round(dup_rate * len(clean))):
        add(clean[i], i, "exact-dup")
    for i in rng.sample(range(len(clean)), round(dup_rate * len(clean))):
        add(_cosmetic(clean[i], rng), i, "cosmetic-dup")
    long_ones = [i for i, r in enumerate(clean) if len(r["messages"][1]["content"].split()) >= 40]
    for i in rng.sample(long_ones, round(near_rate * len(long_ones))):
        m = clean[i]["messages"]
        add(_chat(m[0]["content"], _edit_words(m[1]["content"], 0.05, rng)), i, "near-dup")
    for kind in BROKEN_KINDS:
        for i in rng.sample(range(n_tasks), broken_per_kind):  # task records: short, clear to read
            add(_broken(clean[i], kind), i, f"broken:{kind}")
    for kind in ("loop", "mojibake", "too-long", "too-short"):
        for i in rng.sample(range(len(clean)), low_quality_per_kind):
            add(_low_quality(clean[i], kind, rng, long_source), i, f"low-quality:{kind}")
    order = list(range(len(records)))
    rng.shuffle(order)
    return [records[k] for k in order], [truth[k] for k in order]


def audit(truth: list[Truth], kept: list[int]) -> dict:
    """Score a cleaned dataset (``kept``: indices into the raw records) against the truth.

    ``duplicates left``: kept records beyond the first of their origin; ``clean origins lost``: clean
    records none of whose copies survived; ``defects left``: kept broken or low-quality records.
    """
    kept_truth = [truth[i] for i in kept]
    copies = [t.origin for t in kept_truth if not t.defect.startswith(("broken", "low-quality"))]
    origins = {t.origin for t in truth if t.defect == "clean"}
    return {"kept": len(kept), "duplicates left": len(copies) - len(set(copies)),
            "clean origins lost": len(origins - set(copies)),
            "defects left": sum(t.defect.startswith(("broken", "low-quality")) for t in kept_truth)}
