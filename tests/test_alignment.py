"""labkit.alignment: KTO, ORPO and SimPO configs from a profile, argument checks, short runs, and one run's row."""

import copy

import pytest

import labkit
from labkit import tasks
from labkit.alignment import (
    COLUMNS,
    PreferenceBench,
    PreferenceMethod,
    desirable_weight_for,
    kto_config,
    orpo_config,
    run_preference,
    simpo_config,
    train_kto,
    train_orpo,
)
from labkit.eval import heldout_texts
from labkit.preferences import pair_logprobs

TINY = labkit.get_profile("cpu-tiny")


@pytest.mark.parametrize("profile_name, bf16", [("cpu-tiny", False), ("gpu-rehearsal", True)])
@pytest.mark.parametrize("make, fields", [
    (lambda p: kto_config(p, beta=0.3, desirable_weight=4.0), dict(beta=0.3, desirable_weight=4.0, undesirable_weight=1.0)),
    (lambda p: orpo_config(p, beta=0.2), dict(beta=0.2)),
    (lambda p: simpo_config(p, beta=2.0, gamma_beta_ratio=0.25), dict(beta=2.0, simpo_gamma=0.5, cpo_alpha=0.0, loss_type="simpo")),
])
def test_configs_follow_the_profile(profile_name, bf16, make, fields):
    profile = labkit.get_profile(profile_name)
    config = make(profile)
    assert (config.max_steps, config.per_device_train_batch_size, config.max_length) == (
        profile.train_steps, profile.batch_size, profile.max_seq_len)
    assert (config.use_cpu, config.report_to, config.bf16, config.logging_steps) == (True, [], bf16, 1)
    assert config.learning_rate == labkit.alignment.PREFERENCE_LEARNING_RATE
    assert {k: getattr(config, k) for k in fields} == fields


def test_overrides_win():
    config = orpo_config(TINY, max_steps=7, learning_rate=1e-5)
    assert (config.max_steps, config.learning_rate, config.warmup_steps) == (7, 1e-5, 1)


@pytest.mark.parametrize("call, message", [
    (lambda: kto_config(TINY, beta=0.0), "beta must be > 0, got 0.0"),
    (lambda: kto_config(TINY, desirable_weight=-1.0), "desirable_weight must be > 0"),
    (lambda: kto_config(TINY, per_device_train_batch_size=1), "KTO needs per_device_train_batch_size >= 2"),
    (lambda: orpo_config(TINY, beta=-0.1), "beta must be > 0"),
    (lambda: simpo_config(TINY, gamma_beta_ratio=0.0), "gamma_beta_ratio must be > 0"),
    (lambda: desirable_weight_for([True, True]), "labels need both kinds; got 2 desirable and 0 undesirable"),
    (lambda: PreferenceMethod("x", "rlhf", 1e-5), "kind 'rlhf' is not supported"),
    (lambda: PreferenceMethod("x", "dpo", 0.0), "learning_rate must be > 0"),
    (lambda: PreferenceMethod("x", "kto", 1e-5, beta=0.0), "beta must be > 0"),
])
def test_bad_settings_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("labels, ratio, expected", [
    ([True] + [False] * 4, 1.0, 4.0),  # 1 desirable, 4 undesirable: λ_D·1 = 1·4
    ([True] * 2 + [False] * 8, 4 / 3, 16 / 3),
    ([True, False], 1.0, 1.0),
])
def test_desirable_weight_sets_the_weighted_ratio(labels, ratio, expected):
    weight = desirable_weight_for(labels, ratio=ratio)
    assert weight == pytest.approx(expected)
    assert weight * sum(labels) / (len(labels) - sum(labels)) == pytest.approx(ratio)


@pytest.mark.parametrize("kind, beta", [("dpo", 0.1), ("ipo", 0.1), ("kto", 0.1), ("orpo", 0.1), ("simpo", 2.0)])
def test_methods_build_their_kinds_config(kind, beta):
    method = PreferenceMethod(kind, kind, 3e-5, options={"desirable_weight": 2.0} if kind == "kto" else {})
    config = method.config(TINY, max_steps=3)
    assert (method.beta, config.beta, config.learning_rate, config.max_steps) == (beta, beta, 3e-5, 3)
    if kind in ("dpo", "ipo"):
        assert config.loss_type == ["sigmoid" if kind == "dpo" else "ipo"]
    if kind == "kto":
        assert config.desirable_weight == 2.0


def test_rows_without_the_expected_columns_are_rejected(base):
    model, tokenizer = base
    pairs = tasks.preference_pairs(1, fmt="completion", tasks=("flip",))
    with pytest.raises(ValueError, match=r"KTO rows have no \['completion', 'label'\]"):
        train_kto(model, None, tokenizer, pairs, kto_config(TINY))
    with pytest.raises(ValueError, match=r"pairs have no \['chosen', 'rejected'\]"):
        train_orpo(model, tokenizer, pairs.remove_columns(["chosen", "rejected"]), orpo_config(TINY))


@pytest.mark.slow
def test_a_short_kto_run_raises_desirable_and_lowers_undesirable_answers(base):
    model, tokenizer = base
    policy = copy.deepcopy(model)
    rows = tasks.unpaired_preferences(4, seed=1, fmt="completion", tasks=("add", "flip"))
    config = kto_config(TINY, max_steps=6, per_device_train_batch_size=4, learning_rate=1e-4, disable_tqdm=True)
    train_kto(policy, None, tokenizer, rows, config)
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": r["completion"]} for r in rows]
    before, after = pair_logprobs(model, tokenizer, pairs)[0], pair_logprobs(policy, tokenizer, pairs)[0]
    labels = rows["label"]
    gain = after - before
    desirable = gain[[i for i, good in enumerate(labels) if good]].mean()
    undesirable = gain[[i for i, good in enumerate(labels) if not good]].mean()
    assert desirable > undesirable


@pytest.mark.slow
def test_a_short_orpo_run_makes_chosen_answers_likelier_and_its_row_has_every_column(base):
    model, tokenizer = base
    pairs = tasks.preference_pairs(4, seed=1, fmt="completion", tasks=("add", "flip"))
    bench = PreferenceBench(TINY, tokenizer, model, tasks.verifiable_tasks(2, split="validation", fmt="completion",
                                                                           tasks=("flip",)),
                            tasks.preference_pairs(2, split="validation", fmt="completion", tasks=("add", "flip")),
                            heldout_texts(200))
    assert bench.start["KL to reference"] == pytest.approx(0.0, abs=1e-6) and bench.start["forgetting"] == 0.0
    run = run_preference(PreferenceMethod("ORPO", "orpo", 1e-4), bench, model, pairs, steps=6, batch_size=4,
                         disable_tqdm=True)
    assert list(run.row) == ["method", *COLUMNS] and run.row["method"] == "ORPO"
    assert len(run.correct) == 2 and run.row["peak MiB"] > 0 and run.row["KL to reference"] > 0
    assert run.row["chosen logp change"] > 0  # ORPO's NLL term trains on the chosen answers


@pytest.mark.slow
def test_a_short_simpo_run_widens_the_margin_without_a_reference(base):
    model, tokenizer = base
    policy = copy.deepcopy(model)
    pairs = tasks.preference_pairs(4, seed=1, fmt="completion", tasks=("add", "flip"))
    trainer = train_orpo(policy, tokenizer, pairs, simpo_config(TINY, max_steps=4, per_device_train_batch_size=4,
                                                                learning_rate=1e-4, disable_tqdm=True))
    assert getattr(trainer, "ref_model", None) is None
    (chosen, rejected), (chosen_after, rejected_after) = (pair_logprobs(m, tokenizer, pairs) for m in (model, policy))
    assert ((chosen_after - rejected_after) - (chosen - rejected)).mean() > 0
