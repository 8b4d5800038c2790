"""labkit's perplexity agrees with lm-evaluation-harness on the same model and texts."""

import pytest

from labkit.paths import BASE_DIR
from labkit.corpus import heldout_documents
from labkit.eval import bits_per_byte
from labkit.eval.harness import harness_metrics

pytestmark = pytest.mark.slow  # lm-evaluation-harness loads the model itself and scores six documents


def test_bits_per_byte_agrees_with_lm_evaluation_harness(base):
    model, tokenizer = base
    context = model.config.max_position_embeddings  # the harness's window
    texts = [d.text for d in heldout_documents()[:6]]
    theirs = harness_metrics(BASE_DIR, texts)
    ours = bits_per_byte(model, tokenizer, texts, max_length=context)
    assert ours == pytest.approx(theirs["bits_per_byte"], rel=1e-5)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert theirs["byte_perplexity"] == pytest.approx(2 ** ours, rel=1e-5)
    assert n_bytes > 10_000
