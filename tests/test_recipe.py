from pathlib import Path

import pytest
import yaml

from labkit.recipe import Recipe, RecipeError, field_names, load_recipe, parse_overrides, run_recipe, save_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def write(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_recipes_are_shipped_for_cpu_and_gpu():
    names = {p.name for p in RECIPES}
    assert {"cpu-tiny-sft-lora.yaml", "cpu-tiny-dpo.yaml", "cpu-tiny-kto.yaml", "gpu-qwen2.5-0.5b-lora.yaml",
            "gpu-llama-3.1-8b-qlora.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= set(field_names())
    assert all(getattr(recipe, key) == pytest.approx(value) if isinstance(value, float) else getattr(recipe, key) == value
               for key, value in raw.items())


def test_an_unknown_key_names_itself_suggests_a_close_one_and_lists_the_known(tmp_path):
    path = write(tmp_path / "r.yaml", {"output_dir": "x", "learning_rat": 1e-4})
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert "unknown key 'learning_rat'" in message and "Did you mean 'learning_rate'?" in message
    assert all(name in message for name in field_names())
    assert str(path) in message


@pytest.mark.parametrize("key, value, expected", [
    ("steps", "ten", "steps is str 'ten'; expected int or null"),
    ("steps", 0, "steps must be >= 1, got 0"),
    ("learning_rate", -1e-4, "learning_rate must be > 0"),
    ("method", "lorra", "method is 'lorra'; expected one of full, lora, qlora, dora"),
    ("objective", "ppo", "objective is 'ppo'; expected one of sft, dpo, kto"),
    ("on_bad_records", "drop", "on_bad_records is 'drop'; expected one of error, skip"),
    ("profile", "tpu", "profile is 'tpu'"),
    ("data", "tasks:flop", "data (a labkit.tasks name) is 'flop'"),
    ("r", True, "r is True; expected an integer"),
    ("seed", None, "seed may not be null"),
])
def test_a_wrong_type_or_range_names_the_key(tmp_path, key, value, expected):
    with pytest.raises(RecipeError, match=None) as error:
        load_recipe(write(tmp_path / "r.yaml", {"output_dir": "x", key: value}))
    assert expected in str(error.value)


def test_combinations_are_checked():
    with pytest.raises(RecipeError, match="save_steps \\(20\\) must be <= steps \\(10\\)"):
        Recipe(output_dir="x", steps=10, save_steps=20)
    with pytest.raises(RecipeError, match="qlora.*dpo"):
        Recipe(output_dir="x", objective="dpo", method="qlora")
    with pytest.raises(RecipeError, match="data_format 'completion' does not train objective 'dpo'"):
        Recipe(output_dir="x", objective="dpo", data="pairs.jsonl", data_format="completion")


@pytest.mark.parametrize("values, expected", [
    (dict(data="rows.jsonl", data_format="preference"), "data_format 'preference' does not train objective 'kto'; "
                                                        "expected kto"),
    (dict(data="rows.jsonl", data_format="completion"), "data_format 'completion' does not train objective 'kto'"),
    (dict(batch_size=1), "batch_size must be >= 2 for objective 'kto'"),
    (dict(method="qlora"), "method 'qlora' with objective 'kto' is not supported"),
])
def test_a_kto_recipe_is_checked_naming_the_key(values, expected):
    with pytest.raises(RecipeError) as error:
        Recipe(output_dir="x", objective="kto", **values)
    assert expected in str(error.value)


@pytest.mark.parametrize("objective, data_format", [("sft", "kto"), ("dpo", "kto")])
def test_kto_rows_train_only_the_kto_objective(objective, data_format):
    with pytest.raises(RecipeError, match=f"data_format 'kto' does not train objective '{objective}'"):
        Recipe(output_dir="x", objective=objective, data="rows.jsonl", data_format=data_format)


def test_a_kto_recipe_with_a_kto_file_or_tasks_is_accepted():
    assert Recipe(output_dir="x", objective="kto", data="rows.jsonl", data_format="kto").on_bad_records == "error"
    recipe, profile = Recipe(output_dir="x", objective="kto", data="tasks:flip,sort", on_bad_records="skip").resolved()
    assert recipe.tasks == ["flip", "sort"] and recipe.batch_size == profile.batch_size >= 2


@pytest.mark.parametrize("pairs, expected", [
    (["steps=20"], {"steps": 20}),
    (["learning_rate=1e-4"], {"learning_rate": 1e-4}),
    (["learning_rate=3"], {"learning_rate": 3.0}),
    (["method=full", "eval_data=null"], {"method": "full", "eval_data": None}),
    (["data=tasks:flip,sort"], {"data": "tasks:flip,sort"}),
    (["memory_gib=0.5"], {"memory_gib": 0.5}),
])
def test_overrides_are_typed_by_the_field(pairs, expected):
    parsed = parse_overrides(pairs)
    assert parsed == expected and all(type(parsed[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize("pair, expected", [
    ("steps", "expected key=value"),
    ("stpes=3", "unknown key 'stpes'. Did you mean 'steps'?"),
    ("steps=1.5", "steps is float 1.5; expected int or null"),
])
def test_bad_overrides_name_the_key(pair, expected):
    with pytest.raises(RecipeError) as error:
        parse_overrides([pair])
    assert expected in str(error.value)


def test_overrides_win_over_the_file(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", {"output_dir": "x", "steps": 10}), ["steps=4", "save_steps=2"])
    assert (recipe.steps, recipe.save_steps) == (4, 2)


def test_resolved_fills_sizes_from_the_profile():
    recipe, profile = Recipe(output_dir="x", steps=12).resolved()
    assert (recipe.steps, recipe.save_steps, recipe.batch_size, recipe.max_seq_len) == (12, 3, profile.batch_size,
                                                                                        profile.max_seq_len)
    assert recipe.lora_alpha == 2 * recipe.r and recipe.train_examples == profile.train_examples


def test_the_resolved_recipe_round_trips_through_the_run_directory(tmp_path):
    recipe, _ = Recipe(output_dir=str(tmp_path), method="full", learning_rate=1e-4).resolved()
    save_recipe(recipe, tmp_path)
    assert run_recipe(tmp_path) == recipe
    with pytest.raises(RecipeError, match="no recipe.yaml"):
        run_recipe(tmp_path / "elsewhere")
