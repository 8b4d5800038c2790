"""labkit.preferences: on-policy pairs on stubbed and real samples, the KL to the reference by hand, drift, the DPO config and a short run."""

import copy

import pytest
import torch
import torch.nn.functional as F

import labkit
from labkit import tasks
from labkit.dpo import tokenize_pair
from labkit.eval import normalize_answer
from labkit.preferences import (
    LOGGED,
    PairReport,
    dpo_config,
    dpo_history,
    kl_to_reference,
    logprob_drift,
    on_policy_pairs,
    pair_logprobs,
    train_dpo,
)


@pytest.fixture(scope="module")
def perturbed(base, perturbed_copy):
    """A copy of the shipped model with every weight nudged: a policy that differs from its reference."""
    return perturbed_copy(base[0], 0.05)


# --- pairs from samples -------------------------------------------------------------------------------------------

DATA = tasks.verifiable_tasks(1, fmt="completion", tasks=("add", "reverse", "flip", "sort"))
# The samples a stub model returns for each prompt, in DATA's order (answers: see DATA["answer"]).
def stub_samples(answers):
    right = answers
    return [
        [f"{right[0]}.\nmore text", "7", f" {right[0]} "],  # add: right, wrong, right -> a pair (first right, "7")
        [right[1], right[1], right[1]],  # reverse: all right -> no pair
        ["x", "y", "z"],  # flip: all wrong -> a pair only with the reference
        ["q", right[3], "r"],  # sort: wrong, right, wrong -> a pair (right, "q")
    ]


@pytest.fixture
def stubbed_generation(monkeypatch):
    samples = [s for per_prompt in stub_samples(DATA["answer"]) for s in per_prompt]
    calls = []

    def generate_batch(model, tokenizer, texts, **kwargs):
        calls.append((list(texts), kwargs))
        start = sum(len(t) for t, _ in calls[:-1])
        return samples[start : start + len(texts)]

    monkeypatch.setattr(labkit.generation, "generate_batch", generate_batch)
    return calls


@pytest.mark.parametrize("reference_when_all_wrong, expected_pairs", [(False, 2), (True, 3)])
def test_pairs_from_stubbed_samples_count_every_prompt(stubbed_generation, reference_when_all_wrong, expected_pairs):
    pairs, report = on_policy_pairs(None, None, DATA, samples_per_prompt=3, seed=0, batch_size=5,
                                    reference_when_all_wrong=reference_when_all_wrong)
    assert report == PairReport(prompts=4, samples=12, correct_samples=6, mixed=2, all_right=1, all_wrong=1,
                                pairs=expected_pairs)
    answers = DATA["answer"]
    expected = [{"task": "add", "prompt": DATA["prompt"][0], "chosen": f" {answers[0]}.", "rejected": " 7", "chosen_from": "sample"},
                {"task": "flip", "prompt": DATA["prompt"][2], "chosen": f" {answers[2]}", "rejected": " x", "chosen_from": "reference"},
                {"task": "sort", "prompt": DATA["prompt"][3], "chosen": f" {answers[3]}", "rejected": " q", "chosen_from": "sample"}]
    if not reference_when_all_wrong:
        del expected[1]
    assert pairs.to_list() == expected
    texts = [t for batch, _ in stubbed_generation for t in batch]
    assert texts == [p for p in DATA["prompt"] for _ in range(3)]  # each prompt's samples adjacent, batches of 5
    assert [len(batch) for batch, _ in stubbed_generation] == [5, 5, 2]
    # pure sampling, whatever the model's generation config says (the shipped one sets repetition_penalty=1.3)
    assert all(kw["do_sample"] and kw["top_k"] == 0 and kw["top_p"] == 1.0 and kw["repetition_penalty"] == 1.0
               for _, kw in stubbed_generation)


def test_pairs_from_the_real_model_are_reproducible_and_labelled_by_the_verifier(base):
    model, tokenizer = base
    data = tasks.verifiable_tasks(4, fmt="completion", tasks=("add", "flip"))
    kwargs = dict(samples_per_prompt=3, temperature=1.0, max_new_tokens=8, reference_when_all_wrong=True)
    pairs, report = on_policy_pairs(model, tokenizer, data, seed=1, **kwargs)
    again, again_report = on_policy_pairs(model, tokenizer, data, seed=1, **kwargs)
    assert pairs.to_list() == again.to_list() and report == again_report
    assert report.prompts == len(data) == report.mixed + report.all_right + report.all_wrong
    assert len(pairs) == report.pairs == report.mixed + report.all_wrong
    answers = dict(zip(data["prompt"], data["answer"]))
    for row in pairs:
        assert normalize_answer(row["chosen"]) == normalize_answer(answers[row["prompt"]])
        assert normalize_answer(row["rejected"]) != normalize_answer(answers[row["prompt"]])


@pytest.mark.parametrize("kwargs, message", [
    (dict(samples_per_prompt=1), "samples_per_prompt must be >= 2"),
    (dict(temperature=0.0), "temperature must be > 0"),
])
def test_bad_sampling_settings_are_rejected(base, kwargs, message):
    with pytest.raises(ValueError, match=message):
        on_policy_pairs(*base, DATA, **kwargs)


def test_a_dataset_without_answers_is_rejected(base):
    with pytest.raises(ValueError, match=r"dataset has no \['answer'\]"):
        on_policy_pairs(*base, DATA.remove_columns("answer"))


def test_a_report_whose_counts_do_not_add_up_is_rejected():
    with pytest.raises(ValueError, match="!= 5 prompts"):
        PairReport(prompts=5, samples=10, correct_samples=3, mixed=2, all_right=1, all_wrong=1, pairs=2)
    with pytest.raises(ValueError, match="4 pairs; expected 2"):
        PairReport(prompts=4, samples=8, correct_samples=3, mixed=2, all_right=1, all_wrong=1, pairs=4)


# --- KL to the reference and drift --------------------------------------------------------------------------------

PROMPTS = ["Add the numbers.\n12 + 30\nAnswer:", "Reverse the order of the words.\nzip, map\nAnswer:"]
COMPLETIONS = [" 42", " map, zip"]


def test_kl_is_zero_for_identical_models_and_positive_otherwise(base, perturbed):
    model, tokenizer = base
    assert kl_to_reference(model, copy.deepcopy(model), tokenizer, PROMPTS, COMPLETIONS) == 0.0
    assert kl_to_reference(perturbed, model, tokenizer, PROMPTS, COMPLETIONS) > 1e-4


def test_kl_equals_a_hand_computation_position_by_position(base, perturbed):
    model, tokenizer = base
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, completion in zip(PROMPTS, COMPLETIONS):  # one unpadded sequence at a time
            prompt_ids, completion_ids, _ = tokenize_pair(tokenizer, {"prompt": prompt, "chosen": completion, "rejected": completion})
            ids = torch.tensor([prompt_ids + completion_ids])
            p = F.log_softmax(perturbed(ids).logits[0].float(), -1)  # (T, V)
            q = F.log_softmax(model(ids).logits[0].float(), -1)
            for t in range(len(prompt_ids), ids.size(1)):  # completion token t is predicted at position t - 1
                total += (p[t - 1].exp() * (p[t - 1] - q[t - 1])).sum().item()
                count += 1
    batched = kl_to_reference(perturbed, model, tokenizer, PROMPTS, COMPLETIONS, batch_size=2)  # padded together
    assert batched == pytest.approx(total / count, rel=1e-4)


def test_kl_needs_one_completion_per_prompt(base):
    with pytest.raises(ValueError, match="need as many completions as prompts"):
        kl_to_reference(base[0], base[0], base[1], PROMPTS, COMPLETIONS[:1])


def test_drift_is_zero_without_training_and_follows_the_log_probabilities(base, perturbed):
    model, tokenizer = base
    pairs = tasks.preference_pairs(1, fmt="completion")
    still = logprob_drift(model, model, tokenizer, pairs)
    assert still["chosen change"] == still["rejected change"] == 0.0
    assert still["reward accuracy"] == 0.0  # every pair ties: a tie is a miss, as in TRL
    moved = logprob_drift(perturbed, model, tokenizer, pairs)
    (chosen_before, rejected_before), (chosen_after, rejected_after) = (pair_logprobs(m, tokenizer, pairs) for m in (model, perturbed))
    assert moved["chosen before"] == pytest.approx(chosen_before.mean().item())
    assert moved["rejected change"] == pytest.approx((rejected_after - rejected_before).mean().item())
    expected_accuracy = ((chosen_after - chosen_before) > (rejected_after - rejected_before)).float().mean().item()
    assert moved["reward accuracy"] == pytest.approx(expected_accuracy)


# --- config and a run ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile_name, bf16", [("cpu-tiny", False), ("gpu-rehearsal", True)])
def test_dpo_config_follows_the_profile(profile_name, bf16):
    profile = labkit.get_profile(profile_name)
    config = dpo_config(profile, beta=0.3)
    assert (config.max_steps, config.per_device_train_batch_size, config.max_length) == (
        profile.train_steps, profile.batch_size, profile.max_seq_len)
    assert (config.use_cpu, config.report_to, config.save_strategy, config.bf16, config.fp16) == (True, [], "no", bf16, False)
    assert (config.beta, config.loss_type, config.loss_weights, config.logging_steps) == (0.3, ["sigmoid"], None, 1)
    assert config.learning_rate == labkit.preferences.DPO_LEARNING_RATE


def test_rpo_alpha_becomes_trls_sft_loss_term_and_overrides_win():
    config = dpo_config(labkit.get_profile("cpu-tiny"), loss_type="ipo", rpo_alpha=0.5, max_steps=7, learning_rate=1e-5)
    assert (config.loss_type, config.loss_weights) == (["ipo", "sft"], [1.0, 0.5])
    assert (config.max_steps, config.learning_rate, config.warmup_steps) == (7, 1e-5, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_type="kto"), "loss_type 'kto' is not supported"),
    (dict(rpo_alpha=0.0), "rpo_alpha must be > 0"),
])
def test_bad_dpo_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dpo_config(labkit.get_profile("cpu-tiny"), **kwargs)


@pytest.mark.slow
def test_a_short_dpo_run_raises_the_margin_and_leaves_the_reference(base):
    model, tokenizer = base
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    frozen = {k: v.clone() for k, v in reference.state_dict().items()}
    pairs = tasks.preference_pairs(2, fmt="completion", tasks=("add", "flip"))
    config = dpo_config(labkit.get_profile("cpu-tiny"), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-4,
                        disable_tqdm=True)
    trainer = train_dpo(policy, reference, tokenizer, pairs, config)
    history = dpo_history(trainer)
    assert list(history.columns) == list(LOGGED) and list(history.index) == list(range(1, 7))
    assert history["rewards/margins"].iloc[0] == 0.0  # step 1 runs at the reference's weights
    assert history["rewards/margins"].iloc[-1] > 0.0
    drift = logprob_drift(trainer.model, reference, tokenizer, pairs)
    assert drift["chosen change"] - drift["rejected change"] > 0
    assert all(torch.equal(v, frozen[k]) for k, v in trainer.ref_model.state_dict().items())
    assert not trainer.model.training
    assert trainer.ref_model is reference
