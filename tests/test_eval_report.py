import matplotlib.pyplot as plt
import pytest
from matplotlib.container import BarContainer

from labkit import tasks
from labkit.eval import compare, heldout_loss, heldout_texts
from labkit.eval.report import REPORT_COLUMNS


def test_report_columns_and_baseline_against_itself(base):
    model, tokenizer = base
    test = tasks.verifiable_tasks(3, split="test", fmt="completion")
    texts = heldout_texts(400)[:2]
    report = compare({"base": (model, tokenizer), "again": (model, tokenizer)}, test, max_seq_len=256, heldout_texts=texts,
                     progress=False, max_new_tokens=6)
    assert list(report.table.columns) == REPORT_COLUMNS + [f"acc/{t}" for t in tasks.TASKS]
    assert list(report.table.index) == ["base", "again"]
    again = report.table.loc["again"]
    assert again.gain == 0.0 and again.forgetting == 0.0 and again.gain_p == 1.0
    assert again.heldout_loss == pytest.approx(heldout_loss(model, tokenizer, max_seq_len=256, texts=texts))
    assert again.heldout_perplexity == pytest.approx(report.table.loc["base", "heldout_perplexity"])
    assert set(report.accuracy.task) == set(tasks.TASKS) | {"all"}
    assert list(report.samples.columns) == ["task", "answer", "base", "again"] and len(report.samples) == 4
    assert len(report.scores["base"]) == len(test)

    ax = report.plot()
    tasks_drawn = [t.get_text() for t in ax.get_xticklabels()]
    assert tasks_drawn == list(dict.fromkeys(report.accuracy.task))
    groups = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [g.get_label() for g in groups] == ["base", "again"]  # one bar per task for each model
    for name, bars in zip(["base", "again"], groups):
        heights = [bar.get_height() for bar in bars.patches]
        expected = report.accuracy[report.accuracy.model == name].set_index("task").loc[tasks_drawn, "accuracy"]
        assert heights == pytest.approx(expected.tolist())
    plt.close(ax.figure)


def test_unknown_baseline_is_rejected(base):
    with pytest.raises(ValueError, match="baseline 'tuned' is not one of"):
        compare({"base": base}, tasks.verifiable_tasks(1, fmt="completion"), baseline="tuned", progress=False)
