"""Held-out loss and forgetting: the one measurement every chapter and harness uses.

*Held-out loss* is the mean negative log-likelihood (nats per token) of text the base model never
trained on: labkit's held-out standard-library documents. *Forgetting* is how much a fine-tune raised
it over the base model's. Both are measured the same way everywhere:

* on :func:`heldout_texts` — the first :data:`CHARS_PER_DOCUMENT` characters of every held-out
  document (every document represented, about a quarter of the tokens, a few seconds on a CPU);
* in windows of :func:`heldout_window` tokens — the trained context less :data:`VIRTUAL_TOKEN_ROOM`,
  so that prompt and prefix tuning's learned tokens fit in positions the model was trained on, and
  every method is scored on the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit.eval.likelihood import negative_log_likelihood

CHARS_PER_DOCUMENT = 4000
"""Characters kept from the start of each held-out document (``None`` in :func:`heldout_texts` keeps all)."""

VIRTUAL_TOKEN_ROOM = 32
"""Held-out windows are this many tokens shorter than the context: room for prompt/prefix tuning's tokens."""


def heldout_texts(chars_per_document: int | None = CHARS_PER_DOCUMENT) -> list[str]:
    """The held-out documents' text, each cut to its first ``chars_per_document`` characters."""
    from labkit.corpus import heldout_documents

    if chars_per_document is not None and chars_per_document < 1:
        raise ValueError(f"chars_per_document must be >= 1 or None, got {chars_per_document}")
    return [d.text[:chars_per_document] for d in heldout_documents()]


def heldout_window(model: PreTrainedModel, max_seq_len: int) -> int:
    """Tokens per held-out window: the context (``max_seq_len``, at most the model's positions) less :data:`VIRTUAL_TOKEN_ROOM`."""
    context = min(max_seq_len, model.config.max_position_embeddings)
    if context <= VIRTUAL_TOKEN_ROOM:
        raise ValueError(f"a context of {context} tokens leaves no room for {VIRTUAL_TOKEN_ROOM} virtual tokens")
    return context - VIRTUAL_TOKEN_ROOM


def heldout_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_seq_len: int,
    texts: Sequence[str] | None = None,
) -> float:
    """Mean NLL (nats/token) of ``texts`` (default :func:`heldout_texts`) in :func:`heldout_window` windows."""
    texts = heldout_texts() if texts is None else texts
    total, count = negative_log_likelihood(model, tokenizer, texts, max_length=heldout_window(model, max_seq_len))
    if count == 0:
        raise ValueError("no held-out token was predicted: every text is empty")
    return total / count


def forgetting(tuned_loss: float, base_loss: float) -> float:
    """The rise in held-out loss (nats/token) from the base model to the tuned one; > 0 means it forgot."""
    return tuned_loss - base_loss


def heldout_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> float:
    """exp(held-out loss) on *all* of every held-out document, in the model's own context: its recorded quality."""
    return math.exp(heldout_loss(model, tokenizer, max_seq_len=model.config.max_position_embeddings,
                                 texts=heldout_texts(None)))
