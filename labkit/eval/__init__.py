"""Evaluation: likelihood and held-out loss, generation scoring with intervals, paired tests, preference metrics, reports."""

from labkit.eval.heldout import forgetting, heldout_loss, heldout_perplexity, heldout_texts, heldout_window
from labkit.eval.likelihood import bits_per_byte, negative_log_likelihood, perplexity
from labkit.eval.paired import holm, mcnemar_exact, paired_bootstrap, paired_comparison
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
    "dpo_reward_metrics", "exact_match", "forgetting", "generate_answers", "heldout_loss", "heldout_perplexity",
    "heldout_texts", "heldout_window", "holm", "judge_both_orders", "mcnemar_exact", "model_judge",
    "negative_log_likelihood", "normalize_answer", "paired_bootstrap", "paired_comparison", "perplexity",
    "score_examples", "verifier_judge", "wilson_interval", "win_rate",
]
