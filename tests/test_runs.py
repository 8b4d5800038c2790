import json
import shutil

import pytest

from labkit.data.validation import DataFormatError
from labkit.recipe import Recipe, RecipeError, run_recipe
from labkit.runs import (REJECTS_FILE, MemoryRefusal, latest_checkpoint, max_weight_difference, memory_check,
                         prepare_run_dir, train, training_rows)

MERGE_TOLERANCE = 1e-3
"""Largest |logit difference| allowed between a merged model reloaded from disk and the unmerged adapter model."""
RESUME_TOLERANCE = 1e-5
"""Largest |weight difference| allowed between a resumed run and an uninterrupted one (float32 on a CPU)."""
KTO_ROW = {"prompt": "Reverse abc.\nAnswer:", "completion": " cba", "label": True}
BAD_KTO_ROWS = {1: ({"prompt": "Reverse abc.\nAnswer:", "completion": " cab", "label": "no"}, "'label'"),
                3: ({"prompt": "Reverse abc.\nAnswer:", "label": False}, "'completion'")}
"""Records that fail ``labkit.data`` validation, by their index in :func:`kto_rows`, with the field each error names."""


def kto_rows(n=8):
    rows = [dict(KTO_ROW, label=i % 2 == 0, completion=" cba" if i % 2 == 0 else " abc") for i in range(n)]
    for index, (bad, _) in BAD_KTO_ROWS.items():
        rows[index] = bad
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_latest_checkpoint_is_the_highest_complete_step(tmp_path):
    for step, complete in [(2, True), (10, True), (12, False), (3, True)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"  # 12 was cut short by a kill
    assert latest_checkpoint(tmp_path / "nothing") is None


@pytest.mark.parametrize("resume, expected", [(None, "checkpoint-2"), (True, "checkpoint-2"), (False, None)])
def test_resume_choices(tmp_path, resume, expected):
    from labkit.recipe import save_recipe

    recipe, _ = Recipe(output_dir=str(tmp_path), steps=4, save_steps=2).resolved()
    save_recipe(recipe, tmp_path)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    found = prepare_run_dir(recipe, resume)
    assert (found.name if found else None) == expected
    assert (tmp_path / "checkpoint-2").exists() == (expected is not None)  # --no-resume starts over


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    recipe, _ = Recipe(output_dir=str(tmp_path), steps=4).resolved()
    with pytest.raises(RecipeError, match="holds no complete checkpoint"):
        prepare_run_dir(recipe, True)


@pytest.mark.parametrize("method, objective, fits", [("lora", "sft", True), ("full", "dpo", True)])
def test_memory_check_compares_the_estimate_with_the_device(method, objective, fits):
    recipe, profile = Recipe(output_dir="x", method=method, objective=objective).resolved()
    numbers = memory_check(recipe, profile)
    assert 0 < numbers["estimated_gib"] < numbers["available_gib"]
    tight = Recipe(output_dir="x", method=method, objective=objective, memory_gib=numbers["estimated_gib"] * 0.9).resolved()
    with pytest.raises(MemoryRefusal, match=f"needs an estimated {numbers['estimated_gib']:.2f} GiB"):
        memory_check(*tight)


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_a_preference_full_run_counts_its_reference_model(objective):
    sft = memory_check(*Recipe(output_dir="x", method="full").resolved())
    preference = memory_check(*Recipe(output_dir="x", method="full", objective=objective).resolved())
    assert preference["estimated_gib"] > sft["estimated_gib"]


def test_kto_tasks_draw_labelled_single_answers():
    rows, _ = training_rows(Recipe(output_dir="x", objective="kto", data="tasks:flip", train_examples=20))
    assert len(rows) == 20 and {"prompt", "completion", "label"} <= set(rows.column_names)
    assert set(rows["label"]) == {True, False}


def test_skip_leaves_bad_records_out_with_their_index_and_reason(tmp_path):
    data = str(write_jsonl(tmp_path / "k.jsonl", kto_rows()))
    rejected = []
    rows, _ = training_rows(Recipe(output_dir="x", objective="kto", data=data, data_format="kto",
                                   on_bad_records="skip"), rejected)
    assert len(rows) == 8 - len(BAD_KTO_ROWS) and all(isinstance(label, bool) for label in rows["label"])
    assert [r["index"] for r in rejected] == sorted(BAD_KTO_ROWS)
    for entry in rejected:
        bad, field = BAD_KTO_ROWS[entry["index"]]
        assert entry["record"] == bad and any(field in e and f"record {entry['index']}" in e for e in entry["errors"])
    with pytest.raises(DataFormatError) as error:  # the default refuses the file, naming every bad record
        training_rows(Recipe(output_dir="x", objective="kto", data=data, data_format="kto"))
    assert sorted({e[0] for e in error.value.errors}) == sorted(BAD_KTO_ROWS)


def test_skip_still_refuses_a_file_with_no_valid_record(tmp_path):
    data = str(write_jsonl(tmp_path / "k.jsonl", [bad for bad, _ in BAD_KTO_ROWS.values()]))
    with pytest.raises(DataFormatError):
        training_rows(Recipe(output_dir="x", objective="kto", data=data, data_format="kto", on_bad_records="skip"), [])


def test_error_refuses_the_run_before_any_weights_load(tmp_path, capsys):
    from labkit.cli import EXIT_PROBLEM, main

    data = write_jsonl(tmp_path / "k.jsonl", kto_rows())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\nobjective: kto\ndata: {data}\ndata_format: kto\nsteps: 1\n")
    assert main(["train", str(recipe)]) == EXIT_PROBLEM
    message = capsys.readouterr().err
    assert all(f"record {i}" in message for i in BAD_KTO_ROWS)
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / REJECTS_FILE).exists()


def test_data_files_are_validated_and_chats_become_prompt_completion(tmp_path):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    recipe = Recipe(output_dir="x", data=str(write_jsonl(tmp_path / "c.jsonl", [chat] * 3)), data_format="chat")
    rows, digest = training_rows(recipe)
    assert rows[0] == {"prompt": chat["messages"][:1], "completion": chat["messages"][1:]} and len(digest) == 64
    bad = Recipe(output_dir="x", data=str(write_jsonl(tmp_path / "b.jsonl", [chat, {"messages": []}])), data_format="chat")
    with pytest.raises(DataFormatError) as error:
        training_rows(bad)
    assert [e[0] for e in error.value.errors] == [1]


def test_the_data_hash_follows_the_rows():
    a, b, c = (training_rows(Recipe(output_dir="x", data=d, train_examples=5))[1]
               for d in ("tasks:flip", "tasks:flip", "tasks:sort"))
    assert a == b != c


@pytest.mark.slow
def test_a_row_cut_at_max_seq_len_is_refused_before_training(tmp_path):
    long = {"prompt": "Repeat:\\nAnswer:", "completion": " " + "word " * 200}
    recipe = Recipe(output_dir=str(tmp_path / "run"), data=str(write_jsonl(tmp_path / "d.jsonl", [long] * 4)),
                    data_format="completion", steps=1, max_seq_len=32, batch_size=2)
    with pytest.raises(ValueError, match="training row 0: input_ids ends with token .* not an end-of-sequence"):
        train(recipe)


@pytest.mark.slow
def test_chat_rows_end_with_the_templates_end_of_turn_and_pass_the_check(tmp_path):
    from labkit import tasks

    rows = tasks.verifiable_tasks(4, fmt="chat", tasks=["flip"]).remove_columns(["task", "answer"]).to_list()
    recipe = Recipe(output_dir=str(tmp_path / "run"), data=str(write_jsonl(tmp_path / "c.jsonl", rows)),
                    data_format="chat", steps=1, batch_size=2)
    assert train(recipe)["eos_checked_rows"] == 4


@pytest.mark.slow
def test_dpo_with_lora_trains_and_checks_the_end_of_each_answer(tmp_path):
    recipe = Recipe(output_dir=str(tmp_path), objective="dpo", data_format="preference", steps=2, save_steps=1,
                    train_examples=8, batch_size=4, learning_rate=5e-4)
    result = train(recipe)
    assert result["steps"] == 2 and result["eos_checked_rows"] == 8
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file() and (tmp_path / "checkpoint-2").is_dir()


@pytest.mark.slow
def test_a_qlora_run_merges_into_the_dequantized_base(tmp_path):
    from labkit.run_report import merge_run

    recipe = Recipe(output_dir=str(tmp_path / "run"), method="qlora", steps=3, save_steps=3, train_examples=12,
                    batch_size=4, eval_examples=4)
    train(recipe)
    merged = merge_run(tmp_path / "run", tmp_path / "merged")
    assert merged["max_abs_logit_difference"] <= MERGE_TOLERANCE
    # the adapter was trained against the 4-bit weights: merging it into the original ones differs by far more
    assert merged["max_abs_logit_difference_original_base"] > 10 * merged["max_abs_logit_difference"]
    assert json.loads((tmp_path / "merged" / "merge.json").read_text()) == merged


@pytest.mark.slow
def test_kto_with_lora_trains_checks_each_answers_end_and_resumes(tmp_path):
    def recipe(where):
        return Recipe(output_dir=str(where), objective="kto", data_format="kto", steps=4, save_steps=2,
                      train_examples=16, batch_size=4, learning_rate=5e-4)

    result = train(recipe(tmp_path / "whole"))
    assert result["steps"] == 4 and result["eos_checked_rows"] == 16 and result["rejected_records"] == 0
    assert len(result["losses"]) == 4 and (tmp_path / "whole" / "model" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "whole" / REJECTS_FILE).exists()  # on_bad_records: error writes no rejects file
    train(recipe(tmp_path / "cut"))  # the same run, then cut back to its first checkpoint and resumed
    shutil.rmtree(tmp_path / "cut" / "checkpoint-4")
    resumed = train(recipe(tmp_path / "cut"))
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["steps"] == 4
    assert max_weight_difference(tmp_path / "whole", tmp_path / "cut") <= RESUME_TOLERANCE


@pytest.mark.slow
def test_skip_writes_the_rejects_and_trains_on_the_rest(tmp_path, capsys):
    data = str(write_jsonl(tmp_path / "k.jsonl", kto_rows()))
    run = tmp_path / "run"
    result = train(Recipe(output_dir=str(run), objective="kto", data=data, data_format="kto", on_bad_records="skip",
                          steps=1, batch_size=2))
    rejects = [json.loads(line) for line in (run / REJECTS_FILE).read_text().splitlines()]
    assert [r["index"] for r in rejects] == sorted(BAD_KTO_ROWS) and all(r["errors"] for r in rejects)
    assert (result["rows"], result["rejected_records"]) == (8 - len(BAD_KTO_ROWS), len(BAD_KTO_ROWS))
    assert json.loads((run / "train.json").read_text())["rejected_records"] == len(BAD_KTO_ROWS)
    assert run_recipe(run).on_bad_records == "skip"
    assert f"{len(BAD_KTO_ROWS)} of 8 records of {data} left out" in capsys.readouterr().out
