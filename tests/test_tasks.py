import pytest

from labkit import tasks
from labkit.tasks import ALL_TASKS, FORMATS, TASKS, WORD_TASKS


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_seed_same_rows_other_seed_other_rows(fmt):
    a = tasks.verifiable_tasks(20, seed=1, fmt=fmt).to_list()
    assert a == tasks.verifiable_tasks(20, seed=1, fmt=fmt).to_list()
    assert a != tasks.verifiable_tasks(20, seed=2, fmt=fmt).to_list()


@pytest.mark.parametrize(
    "fmt, columns",
    [
        ("chat", {"task", "answer", "messages"}),
        ("alpaca", {"task", "answer", "instruction", "input", "output"}),
        ("completion", {"task", "answer", "prompt", "completion"}),
    ],
)
def test_schema(fmt, columns):
    ds = tasks.verifiable_tasks(3, fmt=fmt)
    assert set(ds.column_names) == columns
    assert len(ds) == 3 * len(TASKS)
    assert [r["task"] for r in ds][: len(TASKS)] == list(TASKS)


def test_answers_are_correct():
    for ex in tasks.examples(50, seed=3, tasks=ALL_TASKS):
        if ex.task == "add":
            a, b = ex.input.split(" + ")
            assert int(ex.answer) == int(a) + int(b)
        elif ex.task == "reverse":
            assert ex.answer == ex.input[::-1]
        elif ex.task == "sort":
            assert ex.answer.split(", ") == sorted(ex.input.split(", "))
        elif ex.task == "flip":
            assert ex.answer.split(", ") == ex.input.split(", ")[::-1]
        elif ex.task == "first":
            assert ex.answer == ex.input.split(", ")[0]
        elif ex.task == "last":
            assert ex.answer == ex.input.split(", ")[-1]
        elif ex.task == "rotate":
            words = ex.input.split(", ")
            assert ex.answer.split(", ") == words[1:] + words[:1]
        elif ex.task == "upper":
            assert ex.answer == ex.input.upper() and ex.answer != ex.input
        else:
            assert ex.answer == tasks._definitions()[ex.input]


def test_chat_and_completion_formats_carry_the_answer():
    chat = tasks.verifiable_tasks(2, fmt="chat")[0]
    assert chat["messages"][-1] == {"role": "assistant", "content": chat["answer"]}
    comp = tasks.verifiable_tasks(2, fmt="completion")[0]
    assert comp["completion"] == " " + comp["answer"] and comp["prompt"].endswith("Answer:")


@pytest.mark.parametrize("task", ALL_TASKS)
def test_train_validation_and_test_share_no_input(task):
    key = (lambda s: ",".join(sorted(s.split(", ")))) if task in ("sort", "flip", "first", "last", "rotate") else (lambda s: s)
    inputs = {split: {key(e.input) for e in tasks.examples(400, split=split, tasks=[task])} for split in tasks.SPLITS}
    assert all(inputs.values())
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not inputs[a] & inputs[b], (a, b)


def test_split_shares_follow_the_buckets_and_test_is_the_fifth_it_always_was():
    from labkit.corpus import stable_bucket

    keys = [f"{a}+{b}" for a in range(100) for b in range(100)]
    splits = [tasks.split_of(k) for k in keys]
    assert [k for k, s in zip(keys, splits) if s == "test"] == [k for k in keys if stable_bucket(k, 5) == 0]
    shares = {s: splits.count(s) / len(keys) for s in tasks.SPLITS}
    assert shares["test"] == pytest.approx(0.2, abs=0.02) and shares["validation"] == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize("fmt", ["chat", "completion"])
def test_preference_pairs_reject_a_near_miss(fmt):
    ds = tasks.preference_pairs(25, fmt=fmt)
    assert set(ds.column_names) == {"task", "prompt", "chosen", "rejected"}
    for row in ds:
        assert row["chosen"] != row["rejected"]
    assert ds.to_list() == tasks.preference_pairs(25, fmt=fmt).to_list()


def test_unpaired_preferences_label_matches_correctness():
    ds = tasks.unpaired_preferences(40, fmt="completion", seed=5)
    answers = [e.answer for e in tasks.examples(40, seed=5)]
    labels = ds["label"]
    assert 0.3 < sum(labels) / len(labels) < 0.7
    for row, answer in zip(ds, answers):
        assert row["label"] == (row["completion"] == " " + answer)


def test_passkey_hides_the_key_and_sizes_the_context(tokenizer):
    ds = tasks.passkey(6, seed=2, tokenizer=tokenizer, context_tokens=400)
    for row in ds:
        assert row["prompt"].count(row["answer"]) == 2 and len(row["answer"]) == 5
        assert 0 <= row["depth"] <= 1
        assert abs(row["n_tokens"] - 400) / 400 < 0.1
    assert len(set(ds["answer"])) > 1
    short = tasks.passkey(1, filler_repeats=2)[0]
    assert short["n_tokens"] == -1 and len(short["prompt"]) < len(ds[0]["prompt"])


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: tasks.verifiable_tasks(2, tasks=["divide"]), r"unknown task\(s\) \['divide'\]"),
        (lambda: tasks.verifiable_tasks(2, split="dev"), "split must be one of"),
        (lambda: tasks.verifiable_tasks(0), "n_per_task must be >= 1"),
        (lambda: tasks.verifiable_tasks(2, fmt="sharegpt"), "fmt must be one of"),
        (lambda: tasks.preference_pairs(2, fmt="alpaca"), "fmt must be 'chat' or 'completion'"),
        (lambda: tasks.passkey(2, context_tokens=100), "pass both tokenizer and context_tokens"),
    ],
)
def test_bad_arguments_are_rejected(call, error):
    with pytest.raises(ValueError, match=error):
        call()


def test_the_word_list_tasks_share_their_splits_so_no_test_input_is_trained_on_by_another_task():
    key = lambda s: ",".join(sorted(s.split(", ")))  # noqa: E731
    word_lists = ("flip", "first", "last", "rotate")
    train = {key(e.input) for e in tasks.examples(300, split="train", tasks=word_lists)}
    test = {key(e.input) for e in tasks.examples(300, split="test", tasks=word_lists)}
    assert train and test and not train & test


def test_flip_rows_are_unchanged_by_the_tasks_added_beside_it():
    """Chapters' measured numbers depend on these rows: adding tasks must not move them."""
    rows = [(e.input, e.answer) for e in tasks.examples(3, seed=0, tasks=["flip"])]
    assert rows[0][1].split(", ") == rows[0][0].split(", ")[::-1]
    again = [(e.input, e.answer) for e in tasks.examples(3, seed=0, tasks=["flip", "last"]) if e.task == "flip"]
    assert again == rows


@pytest.mark.parametrize("task", WORD_TASKS)
def test_every_added_task_has_a_wrong_answer_in_every_format(task):
    import random

    rng = random.Random(0)
    for ex in tasks.examples(30, tasks=[task]):
        assert tasks.wrong_answer(ex, rng) != ex.answer
    for fmt in FORMATS:
        assert len(tasks.verifiable_tasks(2, fmt=fmt, tasks=[task])) == 2
    assert len(tasks.preference_pairs(2, tasks=[task])) == len(tasks.unpaired_preferences(2, tasks=[task])) == 2


def test_an_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match="upper"):
        tasks.examples(1, tasks=["uppercase"])
