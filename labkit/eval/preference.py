"""Preference metrics: implicit DPO rewards as TRL logs them, and position-debiased pairwise judging."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.dpo import dpo_metrics, implicit_rewards, preference_batch, sequence_logprobs
from labkit.eval.scoring import normalize_answer, render_prompts

Verdict = Literal["first", "second", "tie"]
Judge = Callable[[object, str, str], Verdict]
"""``judge(prompt, first_answer, second_answer)`` -> which answer is better, as presented."""


def _as_text(tokenizer: PreTrainedTokenizerBase, completion) -> str:
    """A completion as text: strings as they are; an assistant turn followed by the tokenizer's end-of-turn token."""
    from labkit.data.masks import turn_end_token

    if isinstance(completion, str):
        return completion
    (message,) = completion
    return message["content"] + turn_end_token(tokenizer)


@torch.no_grad()
def completion_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence, completions: Sequence, *, batch_size: int = 16
) -> torch.Tensor:
    """Sum of log p(completion token | everything before it) for each (prompt, completion) pair.

    Prompt and completion are tokenized separately and concatenated, so the completion's tokens are the
    same whatever the prompt ends with, and a plain-text completion is scored as given (no EOS). TRL 1.16's
    DPO trainer cuts its sequences differently (:func:`labkit.dpo.tokenize_pair`). Shape ``(len(prompts),)``.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    prompt_texts = render_prompts(tokenizer, prompts)
    pad = tokenizer.pad_token_id
    out = []
    for i in range(0, len(prompt_texts), batch_size):
        rows = []
        for p, c in zip(prompt_texts[i : i + batch_size], completions[i : i + batch_size]):
            p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
            c_ids = tokenizer(_as_text(tokenizer, c), add_special_tokens=False)["input_ids"]
            if not c_ids:
                raise ValueError(f"completion {i + len(rows)} is empty")
            rows.append((p_ids + c_ids, len(p_ids)))
        width = max(len(ids) for ids, _ in rows)
        batch = {name: torch.zeros((len(rows), width), dtype=torch.long)
                 for name in ("input_ids", "attention_mask", "completion_mask")}
        batch["input_ids"].fill_(pad)
        for r, (ids, n_prompt) in enumerate(rows):
            batch["input_ids"][r, : len(ids)] = torch.tensor(ids)
            batch["attention_mask"][r, : len(ids)] = 1
            batch["completion_mask"][r, n_prompt : len(ids)] = 1
        out.append(sequence_logprobs(model, batch).cpu())
    return torch.cat(out)


def dpo_reward_metrics(
    policy: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs, *,
    beta: float = 0.1, batch_size: int = 16,
) -> dict[str, float]:
    """The implicit-reward metrics TRL's DPO trainer logs, on a ``prompt``/``chosen``/``rejected`` dataset.

    reward(y) = beta * (log pi(y|x) - log pi_ref(y|x)) (:func:`labkit.dpo.implicit_rewards`), on
    sequences cut as TRL 1.16 cuts them (:func:`labkit.dpo.preference_batch`), so the values are the
    ones TRL would log for one batch holding every pair.
    """
    rows = list(pairs)
    logps = {"policy": [], "reference": []}
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = preference_batch(tokenizer, rows[i : i + batch_size])
            for name, model in (("policy", policy), ("reference", reference)):
                logps[name].append(torch.stack(sequence_logprobs(model, batch).cpu().chunk(2)))  # (2, B): chosen, rejected
    (policy_chosen, policy_rejected), (ref_chosen, ref_rejected) = (torch.cat(logps[n], dim=1) for n in ("policy", "reference"))
    metrics = dpo_metrics(implicit_rewards(policy_chosen, ref_chosen, beta), implicit_rewards(policy_rejected, ref_rejected, beta),
                          policy_chosen, policy_rejected)
    return {key: value for key, value in metrics.items() if key.startswith("rewards/")}


def judge_both_orders(judge: Judge, prompts: Sequence, answers_a: Sequence[str], answers_b: Sequence[str]) -> list[str]:
    """Per prompt ``"a"``, ``"b"`` or ``"tie"``: the judge sees each pair twice, in both orders.

    A side wins only if it wins in both orders; a verdict that follows the position instead of the
    answer (first, then first again) counts as a tie, cancelling position bias.
    """
    if not len(prompts) == len(answers_a) == len(answers_b):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(answers_a)} and {len(answers_b)} answers")
    results = []
    for prompt, a, b in zip(prompts, answers_a, answers_b):
        ab, ba = judge(prompt, a, b), judge(prompt, b, a)
        for verdict in (ab, ba):
            if verdict not in ("first", "second", "tie"):
                raise ValueError(f"judge returned {verdict!r}; expected 'first', 'second' or 'tie'")
        results.append("a" if (ab, ba) == ("first", "second") else "b" if (ab, ba) == ("second", "first") else "tie")
    return results


def win_rate(outcomes: Sequence[str]) -> dict[str, float]:
    """Wins, losses, ties of side ``a`` and its win rate, counting a tie as half a win."""
    if not outcomes:
        raise ValueError("no outcomes")
    wins, losses = outcomes.count("a"), outcomes.count("b")
    ties = len(outcomes) - wins - losses
    return {"wins": wins, "losses": losses, "ties": ties, "win_rate": (wins + 0.5 * ties) / len(outcomes)}


def verifier_judge(references: dict[str, str]) -> Judge:
    """A programmatic judge: an answer is good iff it exactly matches the reference for its prompt."""

    def judge(prompt, first: str, second: str) -> Verdict:
        key = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        ok1, ok2 = (normalize_answer(x) == normalize_answer(references[key]) for x in (first, second))
        return "first" if ok1 and not ok2 else "second" if ok2 and not ok1 else "tie"

    return judge


def model_judge(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Judge:
    """A model as judge: asks which answer is correct and compares the probabilities of " 1" and " 2"."""

    def judge(prompt, first: str, second: str) -> Verdict:
        question = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        query = f"{question}\nAnswer 1: {first}\nAnswer 2: {second}\nThe correct answer is Answer"
        one, two = completion_logprobs(model, tokenizer, [query, query], [" 1", " 2"]).tolist()
        return "first" if one > two else "second" if two > one else "tie"

    return judge
