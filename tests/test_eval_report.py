import pytest

from labkit import tasks
from labkit.corpus import heldout_documents
from labkit.eval import compare
from labkit.eval.report import REPORT_COLUMNS


def test_report_columns_and_baseline_against_itself(base):
    model, tokenizer = base
    test = tasks.verifiable_tasks(3, split="test", fmt="completion")
    texts = [d.text[:400] for d in heldout_documents()[:2]]
    report = compare({"base": (model, tokenizer), "again": (model, tokenizer)}, test, heldout_texts=texts,
                     progress=False, max_new_tokens=6)
    assert list(report.table.columns) == REPORT_COLUMNS + [f"acc/{t}" for t in tasks.TASKS]
    assert list(report.table.index) == ["base", "again"]
    again = report.table.loc["again"]
    assert again.gain == 0.0 and again.forgetting == 0.0
    assert again.heldout_perplexity == pytest.approx(report.table.loc["base", "heldout_perplexity"])
    assert set(report.accuracy.task) == set(tasks.TASKS) | {"all"}
    assert list(report.samples.columns) == ["task", "answer", "base", "again"] and len(report.samples) == 4
    assert len(report.scores["base"]) == len(test)
    assert report.plot() is not None


def test_unknown_baseline_is_rejected(base):
    with pytest.raises(ValueError, match="baseline 'tuned' is not one of"):
        compare({"base": base}, tasks.verifiable_tasks(1, fmt="completion"), baseline="tuned", progress=False)
