import json

import pytest

from labkit.data.validation import DataFormatError
from labkit.recipe import Recipe, RecipeError
from labkit.runs import MemoryRefusal, latest_checkpoint, memory_check, prepare_run_dir, train, training_rows

MERGE_TOLERANCE = 1e-3
"""Largest |logit difference| allowed between a merged model reloaded from disk and the unmerged adapter model."""


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


def test_a_dpo_full_run_counts_its_reference_model():
    sft = memory_check(*Recipe(output_dir="x", method="full").resolved())
    dpo = memory_check(*Recipe(output_dir="x", method="full", objective="dpo").resolved())
    assert dpo["estimated_gib"] > sft["estimated_gib"]


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
