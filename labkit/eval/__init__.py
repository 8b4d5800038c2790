"""Evaluation: perplexity, generation scoring with confidence intervals, preference metrics, reports."""

from labkit.eval.perplexity import bits_per_byte, negative_log_likelihood, perplexity
from labkit.eval.preference import (
    completion_logprobs,
    dpo_reward_metrics,
    judge_both_orders,
    model_judge,
    verifier_judge,
    win_rate,
)
from labkit.eval.report import Report, compare
from labkit.eval.scoring import (
    accuracy_table,
    bootstrap_interval,
    exact_match,
    generate_answers,
    normalize_answer,
    score_examples,
    wilson_interval,
)

__all__ = [
    "Report", "accuracy_table", "bits_per_byte", "bootstrap_interval", "compare", "completion_logprobs",
    "dpo_reward_metrics", "exact_match", "generate_answers", "judge_both_orders", "model_judge",
    "negative_log_likelihood", "normalize_answer", "perplexity", "score_examples", "verifier_judge",
    "wilson_interval", "win_rate",
]
