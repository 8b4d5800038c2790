import copy
from collections import Counter

import pandas as pd
import pytest
import torch

from labkit import tasks
from labkit.multitask import (continual_metrics, forgetting_matrix, forgetting_per_task, mix_tasks, mixture_counts,
                              osf_config, replay, restyle_prompt, with_prompt_style)

WORD = ["last", "first", "flip"]


def task_sets(sizes, fmt="completion"):
    return {t: tasks.verifiable_tasks(n, seed=0, fmt=fmt, tasks=[t]) for t, n in sizes.items()}


@pytest.mark.parametrize("sizes, weights, total, expected", [
    ({"a": 40, "b": 20, "c": 10}, "proportional", None, {"a": 40, "b": 20, "c": 10}),
    ({"a": 40, "b": 20, "c": 10}, "equal", None, {"a": 24, "b": 23, "c": 23}),   # 70 / 3: one remainder row, to the first
    ({"a": 40, "b": 20, "c": 10}, "equal", 30, {"a": 10, "b": 10, "c": 10}),
    ({"a": 40, "b": 20, "c": 10}, "proportional", 7, {"a": 4, "b": 2, "c": 1}),
    ({"a": 40, "b": 20, "c": 10}, "proportional", 10, {"a": 6, "b": 3, "c": 1}),  # 5.71, 2.86, 1.43: remainders .71, .86
    ({"a": 5, "b": 5}, {"a": 3, "b": 1}, 8, {"a": 6, "b": 2}),
    ({"a": 5, "b": 5}, {"a": 1, "b": 0}, 4, {"a": 4, "b": 0}),
])
def test_mixture_counts(sizes, weights, total, expected):
    counts = mixture_counts(sizes, weights, total)
    assert counts == expected
    assert sum(counts.values()) == (sum(sizes.values()) if total is None else total)


@pytest.mark.parametrize("weights, expected", [("proportional", {"last": 12, "first": 6, "flip": 3}),
                                               ("equal", {"last": 7, "first": 7, "flip": 7})])
def test_mix_counts_rows_exactly(weights, expected):
    mixed = mix_tasks(task_sets({"last": 12, "first": 6, "flip": 3}), weights=weights, seed=1)
    assert Counter(mixed["task"]) == expected


def test_proportional_mix_keeps_every_row_once_and_shuffles():
    sets = task_sets({"last": 12, "first": 6, "flip": 3})
    mixed = mix_tasks(sets, seed=1)
    rows = sorted((r["task"], r["prompt"], r["completion"]) for d in sets.values() for r in d)
    assert sorted(zip(mixed["task"], mixed["prompt"], mixed["completion"])) == rows
    assert mixed["task"] != sorted(mixed["task"], key=WORD.index)  # interleaved, not task after task
    assert mix_tasks(sets, seed=1).to_list() == mixed.to_list()
    assert mix_tasks(sets, seed=2).to_list() != mixed.to_list()


def test_upsampling_repeats_every_row_before_any_twice_more():
    sets = task_sets({"last": 2, "first": 5})
    mixed = mix_tasks(sets, weights="equal", total=14)  # 7 of each: "last" 3 full passes + 1
    counts = Counter(p for t, p in zip(mixed["task"], mixed["prompt"]) if t == "last")
    assert sorted(counts.values()) == [3, 4]
    assert len(set(p for t, p in zip(mixed["task"], mixed["prompt"]) if t == "first")) == 5


@pytest.mark.parametrize("style, expected", [
    ("instruction", "Give the last word.\na, b, c\nAnswer:"),
    ("tag", "[last]\na, b, c\nAnswer:"),
    ("none", "a, b, c\nAnswer:"),
])
def test_restyle_prompt(style, expected):
    assert restyle_prompt("Give the last word.\na, b, c\nAnswer:", "last", style) == expected


@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_styles_apply_to_every_row_and_only_when_asked(fmt):
    sets = task_sets({"last": 4, "flip": 4}, fmt=fmt)
    key = (lambda r: r["prompt"]) if fmt == "completion" else (lambda r: r["messages"][0]["content"])
    for style in ("instruction", "tag", "none"):
        mixed = mix_tasks(sets, style=style)
        first_lines = [key(r).split("\n")[0] for r in mixed]
        if style == "tag":
            assert first_lines == [f"[{r['task']}]" for r in mixed]
        elif style == "instruction":
            assert set(first_lines) == {"Give the last word.", "Reverse the order of the words."}
        else:
            assert all("," in line and not line.startswith(("[", "Give", "Reverse")) for line in first_lines)
    plain = tasks.verifiable_tasks(3, fmt=fmt, tasks=WORD)
    tagged = with_prompt_style(plain, "tag")
    assert [r["answer"] for r in tagged] == [r["answer"] for r in plain]  # same examples, same order
    assert with_prompt_style(plain, "instruction").to_list() == plain.to_list()


def test_replay_replaces_the_fraction_and_keeps_the_length():
    current = tasks.verifiable_tasks(40, fmt="completion", tasks=["flip"])
    earlier = [tasks.verifiable_tasks(n, fmt="completion", tasks=[t]) for t, n in (("last", 6), ("first", 20))]
    mixed = replay(current, earlier, 0.25, seed=3)
    assert len(mixed) == 40
    assert Counter(mixed["task"])["flip"] == 30
    old = [(t, p) for t, p in zip(mixed["task"], mixed["prompt"]) if t != "flip"]
    assert len(old) == 10 and len(set(old)) == 10  # 26 old rows to draw from: none drawn twice
    pool = {(r["task"], r["prompt"]) for d in earlier for r in d}
    assert set(old) <= pool
    assert replay(current, earlier, 0.0) is current


@pytest.mark.parametrize("call, message", [
    (lambda: mixture_counts({}), "sizes is empty"),
    (lambda: mixture_counts({"a": 0}), "at least one row"),
    (lambda: mixture_counts({"a": 3}, "uniform"), "weights must be one of"),
    (lambda: mixture_counts({"a": 3, "b": 2}, {"a": 1}), "expected exactly"),
    (lambda: mixture_counts({"a": 3}, {"a": -1}), ">= 0"),
    (lambda: mixture_counts({"a": 3}, total=0), "total must be >= 1"),
    (lambda: restyle_prompt("no newline", "last", "tag"), "no instruction line"),
    (lambda: restyle_prompt("a\nb", "last", "prefix"), "style must be one of"),
    (lambda: replay(tasks.verifiable_tasks(4, fmt="completion", tasks=["flip"]), [], 0.5), "needs earlier stages"),
    (lambda: replay(tasks.verifiable_tasks(4, fmt="completion", tasks=["flip"]), [], 1.0), r"in \[0, 1\)"),
    (lambda: forgetting_matrix({}), "scores is empty"),
    (lambda: forgetting_matrix({"a": {"a": 1.0, "b": 0.0}, "b": {"a": 1.0}}), r"stage 'b': no score for task\(s\) \['b'\]"),
    (lambda: forgetting_per_task(pd.DataFrame([[1.0]], index=["a"], columns=["b"])), "same stages"),
    (lambda: osf_config(1.0), r"fraction in \(0, 1\)"),
])
def test_bad_arguments_say_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# R[i][j]: task j's score after stage i (stages learn a, b, c in that order).
MATRICES = [
    # forgetting (best earlier - final) equals minus backward transfer when each task peaks at its own stage
    ([[0.9, 0.1, 0.0], [0.5, 0.8, 0.2], [0.3, 0.6, 0.7]],
     {"average score": 1.6 / 3, "average forgetting": 0.4, "backward transfer": -0.4, "forward transfer": 0.05},
     [0.6, 0.2]),
    # a peaks after b's stage: forgetting counts from the peak (0.9), backward transfer from the diagonal (0.5)
    ([[0.5, 0.0, 0.0], [0.9, 0.7, 0.1], [0.3, 0.7, 0.6]],
     {"average score": 1.6 / 3, "average forgetting": 0.3, "backward transfer": -0.1, "forward transfer": -0.05},
     [0.6, 0.0]),
]


@pytest.mark.parametrize("rows, expected, per_task", MATRICES)
def test_forgetting_matrix_and_metrics_by_hand(rows, expected, per_task):
    names = ["a", "b", "c"]
    scores = {stage: dict(zip(names, row)) for stage, row in zip(names, rows)}
    matrix = forgetting_matrix(scores)
    assert matrix.to_numpy().tolist() == rows
    assert list(matrix.index) == list(matrix.columns) == names
    assert forgetting_per_task(matrix).tolist() == pytest.approx(per_task)
    metrics = continual_metrics(matrix, base={"a": 0.0, "b": 0.1, "c": 0.1})
    assert metrics == pytest.approx(expected)
    assert pd.isna(continual_metrics(matrix)["forward transfer"])


@pytest.mark.slow
def test_osf_trains_only_its_subspace_and_merges_back(base):
    from peft import get_peft_model

    model = copy.deepcopy(base[0])
    linear = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
    osf = get_peft_model(model, osf_config(0.75))
    trainable = [n for n, p in osf.named_parameters() if p.requires_grad]
    assert trainable and all("osf_svd_params" in n for n in trainable)
    merged = osf.merge_and_unload()
    assert sum(1 for m in merged.modules() if isinstance(m, torch.nn.Linear)) == linear
    assert not any("osf" in n for n, _ in merged.named_parameters())
    weight = dict(merged.named_parameters())
    for name, p in base[0].named_parameters():  # nothing trained yet: merging gives the weights back
        assert torch.allclose(weight[name], p, atol=1e-4), name
