"""Generation-based scoring: batched greedy answers, exact match, accuracy with confidence intervals."""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Sequence

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.generation import generate_batch, greedy_prompt_learning, is_prompt_learning

_QUOTES = {('"', '"'), ("'", "'"), ("`", "`"), ("“", "”")}


def normalize_answer(text: str, *, ignore_case: bool = False) -> str:
    """The normal form exact match compares, applied to prediction and reference alike.

    1. Unicode NFKC (full-width digits, ligatures and the like become plain characters);
    2. surrounding whitespace removed, inner runs of whitespace collapsed to one space;
    3. one pair of surrounding quotes or backticks removed;
    4. one trailing period removed ("85." is "85");
    5. case folded only if ``ignore_case`` (answers here are case-sensitive: ``Queue`` is not ``queue``).

    Nothing else is removed: punctuation inside an answer ("a, b") and articles are kept, since the
    tasks' answers are exact strings, not free text.
    """
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()
    if len(text) >= 2 and (text[0], text[-1]) in _QUOTES:
        text = text[1:-1].strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text.casefold() if ignore_case else text


def exact_match(predictions: Sequence[str], references: Sequence[str], *, ignore_case: bool = False) -> float:
    """Fraction of predictions equal to their reference after ``normalize_answer``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no references to score")
    hits = sum(normalize_answer(p, ignore_case=ignore_case) == normalize_answer(r, ignore_case=ignore_case)
               for p, r in zip(predictions, references))
    return hits / len(references)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927).

    Unlike the normal approximation p ± z·sqrt(p(1-p)/n), it stays inside [0, 1] and keeps its
    coverage near 0 and 1 -- where a fine-tune's accuracy often starts.
    """
    if not 0 <= successes <= n or n < 1:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k = 0 or k = n one bound is exactly 0 or 1; say so rather than leave rounding error
    low = 0.0 if successes == 0 else centre - half
    high = 1.0 if successes == n else centre + half
    return low, high


def bootstrap_interval(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (deterministic in ``seed``)."""
    if not values:
        raise ValueError("no values to resample")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    alpha = (1 - confidence) / 2
    return means[int(alpha * resamples)], means[min(resamples - 1, int((1 - alpha) * resamples))]


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence / 2)).item()


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence) -> list[str]:
    """Strings as they are; chats (lists of messages) through the chat template, ready for the answer."""
    return [p if isinstance(p, str) else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts]


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence,
    *,
    max_new_tokens: int = 24,
    batch_size: int = 32,
    progress: bool = True,
) -> list[str]:
    """Greedy answers, batched and left-padded; each cut at its first newline and stripped.

    ``prompts`` are strings (completion format) or lists of messages (chat format). Prompt- and
    prefix-tuned models are decoded by labkit's own greedy loop (``labkit.generation.greedy_prompt_learning``,
    equal to plain forward passes): their ``generate()`` is wrong here.
    """
    from tqdm.auto import tqdm

    texts = render_prompts(tokenizer, prompts)
    answers: list[str] = []
    for i in tqdm(range(0, len(texts), batch_size), desc="generate", disable=not progress, mininterval=2.0):
        if is_prompt_learning(model):
            rows = greedy_prompt_learning(model, tokenizer, texts[i : i + batch_size], max_new_tokens=max_new_tokens)
        else:
            rows = generate_batch(model, tokenizer, texts[i : i + batch_size], max_new_tokens=max_new_tokens,
                                  do_sample=False, repetition_penalty=1.0, temperature=None, top_k=None, top_p=None)
        answers.extend(row.strip().split("\n", 1)[0].strip() for row in rows)
    return answers


def score_examples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset, **generate_kwargs) -> pd.DataFrame:
    """One row per example: task, answer, prediction, correct.

    ``dataset`` is a ``labkit.tasks`` dataset in ``chat`` or ``completion`` format.
    """
    if "messages" in dataset.column_names:
        prompts = [[m for m in row if m["role"] != "assistant"] for row in dataset["messages"]]
    elif "prompt" in dataset.column_names:
        prompts = dataset["prompt"]
    else:
        raise ValueError(f"dataset needs a 'messages' or 'prompt' column; it has {dataset.column_names}")
    predictions = generate_answers(model, tokenizer, prompts, **generate_kwargs)
    rows = pd.DataFrame({"task": dataset["task"], "answer": dataset["answer"], "prediction": predictions})
    rows["correct"] = [normalize_answer(p) == normalize_answer(a) for p, a in zip(rows.prediction, rows.answer)]
    return rows


def accuracy_table(scores: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per-task and overall accuracy with Wilson intervals, from ``score_examples`` rows."""
    rows = []
    groups = [(task, part) for task, part in scores.groupby("task", sort=False)] + [("all", scores)]
    for task, part in groups:
        k, n = int(part["correct"].sum()), len(part)
        low, high = wilson_interval(k, n, confidence)
        rows.append({"task": task, "n": n, "correct": k, "accuracy": k / n, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows).set_index("task")
