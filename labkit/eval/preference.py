"""Preference metrics: implicit DPO rewards as TRL logs them, and position-debiased pairwise judging."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

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

    Prompt and completion are tokenized separately and concatenated, as TRL's DPO trainer does, so
    the completion's tokens are the same whatever the prompt ends with. Shape ``(len(prompts),)``.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    prompt_texts = render_prompts(tokenizer, prompts)
    device = next(model.parameters()).device
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
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, _) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None].to(device))[..., 0]  # (B, T-1)
        for r, (ids, n_prompt) in enumerate(rows):
            out.append(logp[r, n_prompt - 1 : len(ids) - 1].sum().cpu())  # positions predicting the completion
    return torch.stack(out)


def dpo_reward_metrics(
    policy: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs, *, beta: float = 0.1
) -> dict[str, float]:
    """The implicit-reward metrics TRL's DPO trainer logs, on a ``prompt``/``chosen``/``rejected`` dataset.

    reward(y) = beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023, eq. 5 up to the
    partition term, which cancels in every difference below).
    """
    lp = {name: completion_logprobs(m, tokenizer, pairs["prompt"], pairs[col])
          for name, m, col in [("pc", policy, "chosen"), ("pr", policy, "rejected"),
                               ("rc", reference, "chosen"), ("rr", reference, "rejected")]}
    chosen = beta * (lp["pc"] - lp["rc"])
    rejected = beta * (lp["pr"] - lp["rr"])
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
    }


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
