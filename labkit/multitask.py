"""Many tasks in one model: mixtures of task datasets, replay of earlier tasks, and the forgetting matrix.

A *mixture* (:func:`mix_tasks`) draws a number of rows from each task's dataset — in proportion to the
datasets' sizes, equally, or by given weights — and shuffles them into one dataset with a ``task``
column. The prompt can name the task in words (``labkit.tasks``' instruction), by a tag such as
``[last]``, or not at all (:data:`PROMPT_STYLES`). *Replay* (:func:`replay`) puts a fraction of earlier
tasks' rows into a later stage of a sequence. The *forgetting matrix* (:func:`forgetting_matrix`) holds
each task's score after each stage of a sequence; :func:`continual_metrics` reads the average score,
forgetting and transfer off it (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import pandas as pd
from datasets import Dataset, concatenate_datasets

PROMPT_STYLES = ("instruction", "tag", "none")
"""How a prompt says which task it is: ``labkit.tasks``' instruction in words, a tag ``[task]`` in its
place, or nothing (the input alone)."""
WEIGHTINGS = ("proportional", "equal")
"""Named mixture weights: by the datasets' sizes, or the same number of rows from each task."""


def restyle_prompt(prompt: str, task: str, style: str) -> str:
    """``prompt`` (``instruction`` newline ``rest``, as ``labkit.tasks`` writes it) with its first line
    kept (``instruction``), replaced by ``[task]`` (``tag``) or removed (``none``)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"style must be one of {PROMPT_STYLES}, got {style!r}")
    if "\n" not in prompt:
        raise ValueError(f"prompt {prompt[:40]!r} has no instruction line (expected 'instruction\\ninput...')")
    instruction, rest = prompt.split("\n", 1)
    return {"instruction": prompt, "tag": f"[{task}]\n{rest}", "none": rest}[style]


def with_prompt_style(dataset: Dataset, style: str) -> Dataset:
    """Every row's prompt restyled by :func:`restyle_prompt` (a ``prompt`` string, or a chat's first user turn)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"style must be one of {PROMPT_STYLES}, got {style!r}")
    if "task" not in dataset.column_names:
        raise ValueError(f"dataset needs a 'task' column; it has {dataset.column_names}")
    if style == "instruction":
        return dataset
    if "prompt" in dataset.column_names:
        return dataset.map(lambda row: {"prompt": restyle_prompt(row["prompt"], row["task"], style)})
    if "messages" in dataset.column_names:
        def restyle_chat(row):
            messages = [dict(m) for m in row["messages"]]
            messages[0]["content"] = restyle_prompt(messages[0]["content"], row["task"], style)
            return {"messages": messages}
        return dataset.map(restyle_chat)
    raise ValueError(f"dataset needs a 'prompt' or 'messages' column; it has {dataset.column_names}")


def mixture_counts(sizes: Mapping[str, int], weights: str | Mapping[str, float] = "proportional",
                   total: int | None = None) -> dict[str, int]:
    """Rows to draw from each task so that they add up to ``total`` (default: the sum of ``sizes``).

    ``weights``: ``"proportional"`` (to ``sizes``), ``"equal"``, or a weight per task (any positive scale).
    Shares are rounded by largest remainder, so the counts add up to ``total`` exactly.
    """
    if not sizes:
        raise ValueError("sizes is empty: need at least one task")
    bad = {t: n for t, n in sizes.items() if n < 1}
    if bad:
        raise ValueError(f"every task needs at least one row; got sizes {bad}")
    total = sum(sizes.values()) if total is None else total
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    if isinstance(weights, str):
        if weights not in WEIGHTINGS:
            raise ValueError(f"weights must be one of {WEIGHTINGS} or a dict of task weights, got {weights!r}")
        weights = dict(sizes) if weights == "proportional" else dict.fromkeys(sizes, 1.0)
    if set(weights) != set(sizes):
        raise ValueError(f"weights name tasks {sorted(weights)}; expected exactly {sorted(sizes)}")
    if any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be >= 0 and not all 0, got {dict(weights)}")
    scale = total / sum(weights.values())
    exact = {t: weights[t] * scale for t in sizes}
    counts = {t: math.floor(x) for t, x in exact.items()}
    by_remainder = sorted(sizes, key=lambda t: (-(exact[t] - counts[t]), list(sizes).index(t)))
    for t in by_remainder[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


def _draw(n_rows: int, count: int, rng: random.Random) -> list[int]:
    """``count`` row indices of ``n_rows``: whole passes over every row, then a sample without replacement."""
    passes, rest = divmod(count, n_rows)
    return list(range(n_rows)) * passes + rng.sample(range(n_rows), rest)


def mix_tasks(datasets: Mapping[str, Dataset], *, weights: str | Mapping[str, float] = "proportional",
              total: int | None = None, style: str = "instruction", seed: int = 0) -> Dataset:
    """One shuffled dataset of rows from each task's dataset, counted by :func:`mixture_counts`.

    A task given more rows than it has repeats all of them (whole passes) before sampling the rest; with
    ``"proportional"`` and the default ``total``, every row appears exactly once. The ``task`` column is
    set to each dataset's key; prompts are restyled by :func:`with_prompt_style` with ``style``.
    """
    counts = mixture_counts({t: len(d) for t, d in datasets.items()}, weights, total)
    rng = random.Random(f"{seed}:mix")
    parts = []
    for task, data in datasets.items():
        part = data.select(_draw(len(data), counts[task], rng))
        part = part.remove_columns("task") if "task" in part.column_names else part
        parts.append(with_prompt_style(part.add_column("task", [task] * len(part)), style))
    return concatenate_datasets(parts).shuffle(seed=seed).flatten_indices()


def replay(current: Dataset, earlier: Sequence[Dataset], fraction: float, *, seed: int = 0) -> Dataset:
    """A stage's training data with ``fraction`` of its rows replaced by rows of earlier stages.

    The length stays ``len(current)`` (the same step budget); ``round(fraction * len(current))`` rows come from
    the earlier stages' rows pooled (drawn without replacement while the pool lasts), the rest are
    ``current``'s first rows. The result is shuffled.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
    n_old = round(fraction * len(current))
    if n_old == 0:
        return current
    if not earlier or sum(len(d) for d in earlier) == 0:
        raise ValueError(f"replay of {n_old} rows needs earlier stages' rows; got {len(earlier)} empty stage(s)")
    pool = concatenate_datasets(list(earlier))
    old = pool.select(_draw(len(pool), n_old, random.Random(f"{seed}:replay")))
    return concatenate_datasets([current.select(range(len(current) - n_old)), old]).shuffle(seed=seed).flatten_indices()


def forgetting_matrix(scores: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """The stage x task table of a sequence: row *i* holds every task's score after training stage *i*.

    ``scores`` maps each stage's task (in the order learned) to ``{task: score}`` for every task of the
    sequence; columns follow the order learned.
    """
    stages = list(scores)
    if not stages:
        raise ValueError("scores is empty: need at least one stage")
    for stage, row in scores.items():
        missing = [t for t in stages if t not in row]
        if missing:
            raise ValueError(f"stage {stage!r}: no score for task(s) {missing}; every stage must score every task")
    matrix = pd.DataFrame([[float(scores[s][t]) for t in stages] for s in stages], index=stages, columns=stages)
    matrix.index.name, matrix.columns.name = "after stage", "task"
    return matrix


def _check_square(matrix: pd.DataFrame) -> None:
    if list(matrix.index) != list(matrix.columns):
        raise ValueError(f"a forgetting matrix has the same stages as rows and columns, in order; got rows "
                         f"{list(matrix.index)} and columns {list(matrix.columns)}")


def forgetting_per_task(matrix: pd.DataFrame) -> pd.Series:
    """Each earlier task's best score at any stage before the last, less its final score (Chaudhry et al. 2018)."""
    _check_square(matrix)
    if len(matrix) < 2:
        raise ValueError("forgetting needs at least two stages")
    earlier = matrix.iloc[:-1, :-1]
    return (earlier.max(axis=0) - matrix.iloc[-1, :-1]).rename("forgetting")


def continual_metrics(matrix: pd.DataFrame, base: Mapping[str, float] | None = None) -> dict[str, float]:
    """Average final score; average forgetting; backward transfer (final minus just-learned score, averaged
    over the earlier tasks); forward transfer (a task's score before its stage, minus ``base``'s score on it,
    averaged over the later tasks; NaN without ``base``) — as defined by Lopez-Paz & Ranzato (2017)."""
    _check_square(matrix)
    n = len(matrix)
    values = matrix.to_numpy()
    final = float(values[-1].mean())
    if n < 2:
        return {"average score": final, "average forgetting": float("nan"), "backward transfer": float("nan"),
                "forward transfer": float("nan")}
    backward = float(sum(values[-1, j] - values[j, j] for j in range(n - 1)) / (n - 1))
    forward = float("nan")
    if base is not None:
        tasks = list(matrix.columns)
        forward = float(sum(values[j - 1, j] - base[tasks[j]] for j in range(1, n)) / (n - 1))
    return {"average score": final, "average forgetting": float(forgetting_per_task(matrix).mean()),
            "backward transfer": backward, "forward transfer": forward}


def osf_config(effective_rank: float, target_modules: str | list[str] = "all-linear"):
    """A peft ``OSFConfig`` that freezes each target weight's top ``effective_rank`` singular directions (a
    fraction in (0, 1) of the smaller dimension) and trains the rest: orthogonal subspace fine-tuning."""
    if not 0 < effective_rank < 1:
        raise ValueError(f"effective_rank must be a fraction in (0, 1), got {effective_rank}")
    from peft import OSFConfig

    return OSFConfig(task_type="CAUSAL_LM", effective_rank=effective_rank, target_modules=target_modules)
