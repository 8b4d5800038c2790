"""Evaluation: perplexity (and, as chapters need them, task scores and comparisons)."""

from labkit.eval.perplexity import bits_per_byte, negative_log_likelihood, perplexity

__all__ = ["bits_per_byte", "negative_log_likelihood", "perplexity"]
