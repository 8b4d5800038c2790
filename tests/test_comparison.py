import math

import pytest

import labkit
from labkit import tasks
from labkit.comparison import COLUMNS, Experiment, Method, compare_methods, default_methods, prepare_model, run_method
from labkit.eval import accuracy_table, heldout_loss, heldout_texts, score_examples
from labkit.eval.heldout import VIRTUAL_TOKEN_ROOM
from labkit.tuning import learning_rate
from labkit.vocabulary import METHODS

STEPS = 4


def experiment_for(base, steps: int = STEPS, seed: int = 0) -> Experiment:
    model, tokenizer = base
    return Experiment(labkit.get_profile("cpu-tiny"), model, tokenizer,
                      train=tasks.verifiable_tasks(64, seed=0, fmt="completion", tasks=["flip"]),
                      test=tasks.verifiable_tasks(8, seed=0, split="test", fmt="completion", tasks=["flip"]),
                      steps=steps, seed=seed, heldout=heldout_texts(200)[:2])


@pytest.fixture(scope="module")
def setup(base):
    return experiment_for(base)


@pytest.fixture(scope="module")
def comparison(setup):
    methods = [Method("full", "full", 1e-3), Method("lora r=4", "lora", 3e-3, r=4), Method("prompt", "prompt", 3e-2, num_virtual_tokens=8)]
    return compare_methods(methods, setup, progress=False)


@pytest.fixture(scope="module")
def table(comparison):
    return comparison.table


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="adapter"), "kind 'adapter' is not supported"),
    (dict(kind="lora", learning_rate=0.0), "learning_rate must be > 0"),
    (dict(kind="lora", r=0), "r and num_virtual_tokens must be >= 1"),
    (dict(kind="prompt", num_virtual_tokens=VIRTUAL_TOKEN_ROOM + 1), "num_virtual_tokens must be <="),
    (dict(kind="lora", optim="lion"), "optim 'lion' is not supported"),
])
def test_method_rejects_bad_settings_naming_the_method(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        Method(**{"name": "mine", "learning_rate": 1e-3, **kwargs})
    assert "'mine'" in str(error.value)


@pytest.mark.parametrize("kind, expected", [
    ("lora", dict(use_dora=False, use_rslora=False, init_lora_weights=True)),
    ("dora", dict(use_dora=True)),
    ("rslora", dict(use_rslora=True)),
    ("pissa", dict(init_lora_weights="pissa")),
    ("qlora", dict(use_dora=False)),
])
def test_lora_variants_differ_only_where_they_should(kind, expected):
    config = Method("m", kind, 1e-3, r=4).peft_config()
    assert (config.r, config.lora_alpha) == (4, 8)  # alpha defaults to 2r
    for key, value in expected.items():
        assert getattr(config, key) == value


@pytest.mark.slow
def test_table_has_every_column_and_a_row_per_method_plus_the_base(table):
    assert list(table.columns) == list(COLUMNS)
    assert list(table.index) == ["base model", "full", "lora r=4", "prompt"]


@pytest.mark.slow
def test_no_measured_column_is_a_constant(table):
    trained = table.drop(index="base model")
    # not "train s": wall-clock times differ between runs by noise alone
    for column in ("trainable params", "trainable share", "peak MiB", "heldout loss", "forgetting", "final train loss"):
        assert trained[column].nunique() == len(trained), column
    assert (trained["train s"] > 0).all()  # measured for every trained method


@pytest.mark.slow
def test_trainable_parameters_are_counted_from_the_trained_models(table, setup):
    model = setup.base_model
    total = sum(p.numel() for p in model.parameters())
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    widths = {"q_proj": (hidden, hidden), "o_proj": (hidden, hidden), "gate_proj": (hidden, model.config.intermediate_size),
              "up_proj": (hidden, model.config.intermediate_size), "down_proj": (model.config.intermediate_size, hidden),
              "k_proj": (hidden, model.config.num_key_value_heads * model.config.head_dim),
              "v_proj": (hidden, model.config.num_key_value_heads * model.config.head_dim)}
    assert table.loc["full", "trainable params"] == total
    assert table.loc["lora r=4", "trainable params"] == layers * sum(4 * (i + o) for i, o in widths.values())
    assert table.loc["prompt", "trainable params"] == 8 * hidden
    assert table.loc["base model", "trainable params"] == 0


@pytest.mark.slow
def test_forgetting_is_the_change_in_heldout_loss_from_the_base(table, setup):
    base_loss = heldout_loss(setup.base_model, setup.tokenizer, max_seq_len=setup.profile.max_seq_len, texts=setup.heldout)
    assert table.loc["base model", "heldout loss"] == pytest.approx(base_loss)
    for name, row in table.iterrows():
        assert row["forgetting"] == pytest.approx(row["heldout loss"] - base_loss)


@pytest.mark.slow
def test_estimates_exist_where_labkit_memory_models_the_method(table):
    assert table.loc["full", "estimated MiB"] > table.loc["lora r=4", "estimated MiB"] > 0
    assert math.isnan(table.loc["prompt", "estimated MiB"])


@pytest.mark.slow
def test_a_run_row_is_what_its_model_scores(setup):
    run = run_method(Method("lora", "lora", 3e-3, r=4), setup)
    scores = score_examples(run.model, setup.tokenizer, setup.test, progress=False)
    overall = accuracy_table(scores).loc["all"]
    assert (run.row["accuracy"], run.row["ci_low"], run.row["ci_high"]) == (overall.accuracy, overall.ci_low, overall.ci_high)
    assert run.correct == scores["correct"].tolist()
    expected = heldout_loss(run.model, setup.tokenizer, max_seq_len=setup.profile.max_seq_len, texts=setup.heldout)
    assert run.row["heldout loss"] == pytest.approx(expected)
    assert run.row["final train loss"] == [h["loss"] for h in run.trainer.state.log_history if "loss" in h][-1]


@pytest.mark.slow
def test_runs_are_reproducible_with_a_seed(base):
    experiment = experiment_for(base, seed=3)
    first, second = (run_method(Method("ia3", "ia3", 3e-2), experiment).row for _ in range(2))
    assert first["heldout loss"] == second["heldout loss"]
    assert first["final train loss"] == second["final train loss"]


@pytest.mark.slow
def test_loraplus_trains_b_faster_than_a(setup):
    _, optimizer = prepare_model(Method("lora+", "loraplus", 1e-3, loraplus_lr_ratio=16), setup.profile, setup.base_model)
    rates = {group["lr"] for group in optimizer.param_groups if group["params"]}
    assert rates == {1e-3, 16e-3}


@pytest.mark.slow
def test_on_run_sees_every_trained_model(base):
    seen = []
    result = compare_methods([Method("ia3", "ia3", 3e-2), Method("lora", "lora", 3e-3, r=2)], experiment_for(base, steps=2),
                             progress=False, on_run=lambda method, run: seen.append((method.name, type(run.model).__name__)))
    assert seen == [("ia3", "PeftModelForCausalLM"), ("lora", "PeftModelForCausalLM")]
    assert list(result.correct.columns) == ["base model", "ia3", "lora"]


@pytest.mark.slow
def test_per_prompt_correctness_matches_the_table_and_feeds_the_paired_test(comparison, setup):
    assert len(comparison.correct) == len(setup.test)
    for name, column in comparison.correct.items():
        assert column.mean() == pytest.approx(comparison.table.loc[name, "accuracy"]), name
    pairs = comparison.paired(reference="base model")
    assert list(pairs["a"]) == ["full", "lora r=4", "prompt"] and set(pairs["b"]) == {"base model"}
    for _, pair in pairs.iterrows():
        assert pair.difference == pytest.approx(comparison.table.loc[pair.a, "accuracy"] - comparison.table.loc[pair.b, "accuracy"])
    assert len(comparison.paired(systems=["full", "prompt"])) == 1


def test_an_experiment_rejects_an_empty_split_or_no_steps(base):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        experiment_for(base, steps=0)
    model, tokenizer = base
    empty = tasks.verifiable_tasks(1, fmt="completion").select([])
    with pytest.raises(ValueError, match="train and test need rows"):
        Experiment(labkit.get_profile("cpu-tiny"), model, tokenizer, train=empty, test=empty, steps=1)


def test_default_methods_cover_every_kind_at_its_learning_rate():
    profile = labkit.get_profile("cpu-tiny")
    methods = default_methods(profile, r=4)
    assert [m.kind for m in methods] == list(METHODS)
    assert all(m.learning_rate == learning_rate(m.kind, profile) for m in methods)
    assert len({m.name for m in methods}) == len(methods)
    assert [m.kind for m in default_methods(profile, kinds=["ia3", "full"])] == ["ia3", "full"]
    with pytest.raises(ValueError, match="kind 'adapter' is not supported"):
        default_methods(profile, kinds=["lora", "adapter"])


@pytest.mark.slow
def test_a_qlora_adapter_reloads_onto_a_fresh_base_within_2e_3_and_merging_moves_logits_more(setup):
    from labkit.adapters import adapter_round_trip
    from labkit.comparison import fresh_base

    method = Method("qlora", "qlora", 1e-2, r=2)
    run = run_method(method, setup, max_steps=2)
    ids = setup.tokenizer("def f(x):", return_tensors="pt")["input_ids"]
    trip = adapter_round_trip(run.model, fresh_base(method, setup.profile, setup.base_model), ids)
    # not exact (5e-4 here) although the 4-bit weights and constants are identical: source untraced;
    # before fresh_base prepared the base as training does, the difference was 0.12
    assert trip["reload max |Δlogit|"] < 2e-3
    assert trip["merge max |Δlogit|"] > trip["reload max |Δlogit|"]  # merging re-quantizes the 4-bit weights
