"""labkit.dpo: the loss formulas on hand-computed values, and loss, metrics and gradients against TRL's DPOTrainer."""

import copy
import math

import pytest
import torch
from trl import DPOConfig, DPOTrainer

from labkit import tasks
from labkit.dpo import (
    LOSS_TYPES,
    DPOSpec,
    dpo_batch_loss,
    dpo_loss,
    dpo_metrics,
    preference_batch,
    sequence_logprobs,
)
from labkit.eval import dpo_reward_metrics


def softplus(x: float) -> float:
    """-log sigmoid(-x), written out in floats."""
    return math.log1p(math.exp(x))


# Two pairs. Log-ratios (policy - reference): chosen [1, 0.5], rejected [-1, 1.5]; completion lengths chosen [2, 1],
# rejected [4, 3]. With beta = 0.5 the margins beta * (c - r) are [1, -0.5].
LOGPS = dict(policy_chosen_logps=torch.tensor([-2.0, -3.0]), policy_rejected_logps=torch.tensor([-4.0, -1.5]),
             ref_chosen_logps=torch.tensor([-3.0, -3.5]), ref_rejected_logps=torch.tensor([-3.0, -3.0]))
LENGTHS = dict(chosen_lengths=torch.tensor([2, 1]), rejected_lengths=torch.tensor([4, 3]))
BETA = 0.5

FORMULA_CASES = [
    ("sigmoid", 0.0, [softplus(-1.0), softplus(0.5)]),  # -log sigmoid(margin)
    ("hinge", 0.0, [0.0, 1.5]),  # relu(1 - margin)
    # (c/n_w - r/n_l - 1/(2 beta))^2: (1/2 + 1/4 - 1)^2 and (0.5/1 - 1.5/3 - 1)^2
    ("ipo", 0.0, [0.0625, 1.0]),
    # ((1 - eps) softplus(-m) - eps softplus(m)) / (1 - 2 eps), eps = 0.2
    ("robust", 0.2, [(0.8 * softplus(-1.0) - 0.2 * softplus(1.0)) / 0.6, (0.8 * softplus(0.5) - 0.2 * softplus(-0.5)) / 0.6]),
]


@pytest.mark.parametrize("loss_type, label_smoothing, expected", FORMULA_CASES, ids=[c[0] for c in FORMULA_CASES])
def test_each_loss_equals_its_formula_on_hand_computed_values(loss_type, label_smoothing, expected):
    losses, chosen_rewards, rejected_rewards = dpo_loss(**LOGPS, beta=BETA, loss_type=loss_type,
                                                        label_smoothing=label_smoothing, **LENGTHS)
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, 0.25]))  # beta * (log pi - log pi_ref)
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5, 0.75]))


def test_robust_without_flipped_labels_is_sigmoid_and_sigmoid_at_zero_margin_is_log_2():
    sigmoid, *_ = dpo_loss(**LOGPS, beta=BETA)
    robust, *_ = dpo_loss(**LOGPS, beta=BETA, loss_type="robust", label_smoothing=0.0)
    torch.testing.assert_close(robust, sigmoid)
    zero = torch.zeros(3)
    at_zero, *_ = dpo_loss(zero, zero, zero, zero, beta=0.1)
    torch.testing.assert_close(at_zero, torch.full((3,), math.log(2)))


def test_only_the_policy_carries_gradient_and_rewards_are_detached():
    policy_chosen = LOGPS["policy_chosen_logps"].clone().requires_grad_()
    losses, chosen_rewards, _ = dpo_loss(policy_chosen, *list(LOGPS.values())[1:], beta=BETA)
    losses.sum().backward()
    # d/dc of -log sigmoid(beta (c - r)) = -beta * sigmoid(-margin)
    torch.testing.assert_close(policy_chosen.grad, -BETA * torch.sigmoid(torch.tensor([-1.0, 0.5])))
    assert not chosen_rewards.requires_grad


def test_metrics_are_trls_batch_means_and_a_tie_is_no_accuracy():
    metrics = dpo_metrics(torch.tensor([0.5, 0.2, 0.0]), torch.tensor([-0.5, 0.4, 0.0]),
                          torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-4.0, -5.0, -6.0]))
    expected = {"rewards/chosen": 0.7 / 3, "rewards/rejected": -0.1 / 3, "rewards/accuracies": 1 / 3,
                "rewards/margins": 0.8 / 3, "logps/chosen": -2.0, "logps/rejected": -5.0}
    assert metrics == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=0.0), r"beta must be > 0, got 0.0"),
    (dict(loss_type="kto"), r"loss_type 'kto' is not supported; expected one of 'sigmoid', 'ipo', 'hinge', 'robust'"),
    (dict(loss_type="robust", label_smoothing=0.5), r"label_smoothing must be in \[0, 0.5\) for loss_type 'robust', got 0.5"),
    (dict(loss_type="sigmoid", label_smoothing=0.1), r"label_smoothing is used only by loss_type 'robust'; got 0.1 with 'sigmoid'"),
])
def test_bad_settings_are_rejected_saying_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPOSpec(**kwargs)
    with pytest.raises(ValueError, match=message):
        dpo_loss(**LOGPS, **{"beta": BETA, **kwargs})


def test_ipo_needs_the_completion_lengths_and_the_four_tensors_one_shape():
    with pytest.raises(ValueError, match="pass chosen_lengths and rejected_lengths"):
        dpo_loss(**LOGPS, beta=BETA, loss_type="ipo")
    with pytest.raises(ValueError, match=r"must have one shape \(B,\); got \[\(2,\), \(3,\)\]"):
        dpo_loss(**{**LOGPS, "ref_rejected_logps": torch.zeros(3)}, beta=BETA)


def test_preference_rows_are_checked(tokenizer):
    with pytest.raises(ValueError, match="row has no 'rejected'; expected the keys prompt, chosen, rejected"):
        preference_batch(tokenizer, [{"prompt": "a", "chosen": " b"}])
    with pytest.raises(ValueError, match="no rows"):
        preference_batch(tokenizer, [])


def test_sequence_logprobs_sum_the_completion_tokens_only_whatever_the_padding(base):
    model, tokenizer = base
    rows = list(tasks.preference_pairs(1, fmt="completion", tasks=("add", "module")))
    batch = preference_batch(tokenizer, rows)
    row = 1  # the second chosen row: padded, since the module answer is longer
    ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
    completion = batch["completion_mask"][row][batch["attention_mask"][row].bool()].bool()
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None]).logits[0].float(), -1)  # (T, V), unpadded
        batched = sequence_logprobs(model, batch)
    manual = sum(logp[t - 1, ids[t]] for t in range(1, len(ids)) if completion[t])
    assert batch["attention_mask"].sum(1).min() < batch["input_ids"].size(1)  # some row is padded
    torch.testing.assert_close(batched[row], manual, rtol=0, atol=1e-5)


# --- against TRL 1.16's DPOTrainer ---------------------------------------------------------------------------------

TRL_CASES = [  # (loss_type, beta, label_smoothing, fmt)
    ("sigmoid", 0.1, 0.0, "chat"),
    ("sigmoid", 0.1, 0.0, "completion"),
    ("ipo", 0.5, 0.0, "chat"),
    ("hinge", 2.0, 0.0, "chat"),
    ("robust", 0.1, 0.2, "chat"),
]
assert {c[0] for c in TRL_CASES} == set(LOSS_TYPES)
METRIC_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
FP32_SUM_ATOL = 5e-5
"""For losses and metrics. The log-probabilities are fp32 sums near -50, where fp32 values lie 3.8e-6 apart; TRL's
fused LM head adds in another order than cross-entropy, so they differ by about one such step (measured: 3.8e-6
in logps, 9.2e-6 in a reward and the loss with hinge at beta = 2)."""
GRAD_RTOL_OF_MAX = 1e-5
"""For each parameter's gradient, as a fraction of its largest entry (measured: at most 1.1e-6)."""


@pytest.fixture(scope="module")
def policy_and_reference(base, perturbed_copy):
    """The shipped model as reference and a perturbed copy as policy, so every reward is non-zero."""
    return perturbed_copy(base[0], 0.02), base[0]


def trl_step(policy, reference, tokenizer, pairs, spec: DPOSpec, output_dir):
    """TRL's batch (from its own tokenization and collator), loss, logged metrics and policy gradients."""
    model, ref_model = copy.deepcopy(policy), copy.deepcopy(reference)  # TRL patches their forward
    config = DPOConfig(output_dir=str(output_dir), per_device_train_batch_size=len(pairs), beta=spec.beta,
                       loss_type=[spec.loss_type], label_smoothing=spec.label_smoothing, use_cpu=True,
                       report_to="none", bf16=False, fp16=False, disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=pairs, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
    loss.backward()
    trainer.log({})  # moves the metrics TRL gathered for this batch into log_history
    logged = trainer.state.log_history[-1]
    grads = {name: p.grad for name, p in trainer.model.named_parameters()}
    return batch, loss.detach(), {k: logged[k] for k in METRIC_KEYS}, grads


@pytest.mark.parametrize("loss_type, beta, label_smoothing, fmt", TRL_CASES, ids=[f"{c[0]}-{c[3]}" for c in TRL_CASES])
def test_loss_metrics_and_gradients_equal_trls_dpo_trainer(policy_and_reference, tokenizer, tmp_path,
                                                           loss_type, beta, label_smoothing, fmt):
    policy, reference = policy_and_reference
    pairs = tasks.preference_pairs(1, fmt=fmt)  # one pair per task: 5 pairs, completions of different lengths
    spec = DPOSpec(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    trl_batch, trl_loss, trl_metrics, trl_grads = trl_step(policy, reference, tokenizer, pairs, spec, tmp_path)

    batch = preference_batch(tokenizer, pairs)
    assert batch.keys() == trl_batch.keys()
    for key in batch:
        assert torch.equal(batch[key], trl_batch[key]), key

    ours = copy.deepcopy(policy).train()
    loss, metrics = dpo_batch_loss(ours, reference, batch, spec)
    loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss, rtol=0, atol=FP32_SUM_ATOL)
    assert metrics == pytest.approx(trl_metrics, rel=0, abs=FP32_SUM_ATOL)
    assert metrics["rewards/margins"] != 0  # the policy differs from the reference
    grads = {name: p.grad for name, p in ours.named_parameters()}
    assert grads.keys() == trl_grads.keys()
    for name, grad in grads.items():
        atol = GRAD_RTOL_OF_MAX * trl_grads[name].abs().max().item()
        torch.testing.assert_close(grad, trl_grads[name], rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")
    assert any(g.abs().max() > 0 for g in grads.values())

    if loss_type == "sigmoid":  # the evaluation helper reports the same rewards TRL logs
        rewards = dpo_reward_metrics(policy, reference, tokenizer, pairs, beta=beta, batch_size=2)
        assert rewards == pytest.approx({k: v for k, v in trl_metrics.items() if k.startswith("rewards/")},
                                        rel=0, abs=FP32_SUM_ATOL)
