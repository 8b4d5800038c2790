import copy

import pytest
import torch

from labkit import tasks
from labkit.eval import (
    completion_logprobs,
    dpo_reward_metrics,
    judge_both_orders,
    model_judge,
    verifier_judge,
    win_rate,
)


def always(verdict):
    return lambda prompt, first, second: verdict


def prefers(answer):
    """An unbiased judge that knows which answer is right."""
    return lambda prompt, first, second: "first" if first == answer else "second" if second == answer else "tie"


def test_a_judge_that_always_picks_a_position_produces_only_ties():
    for position in ("first", "second"):
        outcomes = judge_both_orders(always(position), ["p"] * 5, ["x"] * 5, ["y"] * 5)
        assert outcomes == ["tie"] * 5


def test_an_unbiased_judge_decides_in_both_orders():
    assert judge_both_orders(prefers("good"), ["p", "q"], ["good", "bad"], ["bad", "good"]) == ["a", "b"]


def test_win_rate_counts_ties_as_half():
    assert win_rate(["a", "a", "b", "tie"]) == {"wins": 2, "losses": 1, "ties": 1, "win_rate": 0.625}


def test_judge_verdicts_are_validated():
    with pytest.raises(ValueError, match="judge returned 'A'"):
        judge_both_orders(always("A"), ["p"], ["x"], ["y"])


def test_verifier_judge_uses_exact_match():
    judge = verifier_judge({"Add the two numbers.\n2 + 2": "4"})
    prompt = [{"role": "user", "content": "Add the two numbers.\n2 + 2"}]
    assert judge_both_orders(judge, [prompt, prompt, prompt], ["4.", "5", "5"], ["5", " 4", "6"]) == ["a", "b", "tie"]


def test_completion_logprobs_equal_a_manual_sum(base):
    model, tokenizer = base
    prompt, completion = "Add the two numbers.\n2 + 2\nAnswer:", " 4"
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p_ids + c_ids])).logits[0], -1)
    manual = sum(logp[len(p_ids) - 1 + j, t].item() for j, t in enumerate(c_ids))
    batched = completion_logprobs(model, tokenizer, [prompt, "x"], [completion, " a longer completion"])
    assert batched[0].item() == pytest.approx(manual, abs=1e-4)


def test_dpo_metrics_are_zero_for_the_reference_itself_and_move_with_the_policy(base):
    model, tokenizer = base
    pairs = tasks.preference_pairs(3, fmt="chat")
    same = dpo_reward_metrics(model, model, tokenizer, pairs, beta=0.1)
    assert same == {"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/accuracies": 0.0, "rewards/margins": 0.0}
    policy = copy.deepcopy(model)
    with torch.no_grad():
        policy.lm_head.weight.mul_(1.5)  # sharpen: changes every log-prob
    moved = dpo_reward_metrics(policy, model, tokenizer, pairs, beta=0.1)
    assert moved["rewards/margins"] == pytest.approx(moved["rewards/chosen"] - moved["rewards/rejected"], abs=1e-5)
    assert moved["rewards/chosen"] != 0.0


def test_model_judge_returns_a_verdict(base):
    verdict = model_judge(*base)("Add the two numbers.\n2 + 2", "4", "5")
    assert verdict in ("first", "second")


class _NonChatMLTokenizer:
    """Just what turn_end_token reads: a vocabulary without ChatML's tokens, and an EOS."""

    eos_token = "<|eot_id|>"

    def get_vocab(self):
        return {"<|eot_id|>": 0, "a": 1}


def test_a_chat_completion_ends_with_the_tokenizers_own_end_of_turn(tokenizer):
    from labkit.eval.preference import _as_text

    reply = [{"role": "assistant", "content": "85"}]
    assert _as_text(tokenizer, reply) == "85<|im_end|>"  # ChatML
    assert _as_text(_NonChatMLTokenizer(), reply) == "85<|eot_id|>"  # no ChatML token appended to a non-ChatML vocabulary
    assert _as_text(tokenizer, " 85") == " 85"
