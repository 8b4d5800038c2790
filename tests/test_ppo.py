import copy
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from labkit.ppo import PPOConfig, ValueModel, gae, kl_estimate, policy_loss, response_logprobs, train_ppo, value_loss, whiten

ONES = torch.ones(1, 3)


# ---- GAE against a hand computation ----

def test_gae_matches_a_hand_computation():
    rewards, values = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 0.2]])
    # deltas: t2 = 2 + 0 - 0.2 = 1.8; t1 = 0 + 0.2 - 1.0 = -0.8; t0 = 1 + 1.0 - 0.5 = 1.5
    # A2 = 1.8; A1 = -0.8 + 0.95 * 1.8 = 0.91; A0 = 1.5 + 0.95 * 0.91 = 2.3645
    advantages, returns = gae(rewards, values, ONES, gamma=1.0, lam=0.95)
    assert advantages[0].tolist() == pytest.approx([2.3645, 0.91, 1.8])
    assert returns[0].tolist() == pytest.approx([2.8645, 1.91, 2.0])


@pytest.mark.parametrize("gamma, lam, expected", [
    (1.0, 1.0, [[3.0 - 0.5, 2.0 - 1.0, 2.0 - 0.2]]),           # Monte Carlo: reward-to-go minus value
    (1.0, 0.0, [[1.5, -0.8, 1.8]]),                            # one-step TD errors
    (0.5, 1.0, [[1.0 + 0.25 * 2.0 - 0.5, 0.5 * 2.0 - 1.0, 1.8]]),  # discounted reward-to-go minus value
])
def test_gae_limits(gamma, lam, expected):
    advantages, _ = gae(torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 0.2]]), ONES, gamma=gamma, lam=lam)
    assert advantages[0].tolist() == pytest.approx(expected[0])


def test_gae_ignores_everything_past_the_last_real_token():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    padded, _ = gae(torch.tensor([[1.0, 3.0, 99.0]]), torch.tensor([[0.5, 1.0, 99.0]]), mask)
    short, _ = gae(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.5, 1.0]]), torch.ones(1, 2))
    assert padded[0, :2].tolist() == pytest.approx(short[0].tolist()) and padded[0, 2] == 0


# ---- the clipped objectives against their formulas ----

@pytest.mark.parametrize("ratio, advantage, loss, clipped", [
    (1.1, 1.0, -1.1, False),   # inside the range: plain ratio * A
    (1.5, 1.0, -1.2, True),    # A > 0, ratio above 1 + eps: the gain stops at 1.2
    (1.5, -1.0, 1.5, False),   # A < 0, ratio above the range: the loss is not capped
    (0.5, 1.0, -0.5, False),   # A > 0, ratio below the range: not capped
    (0.5, -1.0, 0.8, True),    # A < 0, ratio below 1 - eps: the gain stops at 0.8
    (0.9, -2.0, 1.8, False),   # inside the range, A < 0
])
def test_policy_loss_is_the_clipped_surrogate(ratio, advantage, loss, clipped):
    old = torch.tensor([[-1.0]])
    value, fraction = policy_loss(old + math.log(ratio), old, torch.tensor([[advantage]]), torch.ones(1, 1), 0.2)
    assert value.item() == pytest.approx(loss, rel=1e-5)
    assert fraction.item() == float(clipped)


def test_policy_loss_gradient_vanishes_where_clipped():
    logprobs = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, _ = policy_loss(logprobs, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2)
    loss.backward()
    assert logprobs.grad[0, 0] == 0 and logprobs.grad[0, 1] == pytest.approx(-1.1 / 2)


@pytest.mark.parametrize("new, old, target, loss, clipped", [
    (1.1, 1.0, 2.0, 0.5 * 0.81, False),        # moved 0.1 towards the target: unclipped
    (1.5, 1.0, 2.0, 0.5 * 0.64, True),         # moved 0.5 > 0.2: the clipped value (1.2) is further, it counts
    (0.5, 1.0, 2.0, 0.5 * 2.25, False),        # moved away from the target: the larger, unclipped error counts
])
def test_value_loss_is_the_clipped_squared_error(new, old, target, loss, clipped):
    value, fraction = value_loss(torch.tensor([[new]]), torch.tensor([[old]]), torch.tensor([[target]]), torch.ones(1, 1), 0.2)
    assert value.item() == pytest.approx(loss) and fraction.item() == float(clipped)


def test_whiten_gives_mean_zero_variance_one_over_the_mask():
    values, mask = torch.tensor([[1.0, 2.0, 3.0, 50.0], [4.0, 5.0, 0.0, -7.0]]), torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 0]])
    out = whiten(values, mask)
    real = out[mask.bool()]
    assert real.mean().item() == pytest.approx(0, abs=1e-6) and real.var().item() == pytest.approx(1, rel=1e-4)
    assert out[:, 3].tolist() == [0, 0]


# ---- the KL estimators on a known categorical ----

P, Q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.4, 0.35, 0.25])
EXACT_KL = (P * (P / Q).log()).sum().item()


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased(estimator):
    per_outcome = kl_estimate(P.log(), Q.log(), estimator)  # the estimate for each outcome sampled from P
    assert (P * per_outcome).sum().item() == pytest.approx(EXACT_KL, rel=1e-5)  # exact expectation under P
    samples = torch.multinomial(P, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert per_outcome[samples].mean().item() == pytest.approx(EXACT_KL, abs=4e-3)


def test_k3_has_lower_variance_and_is_never_negative_when_close():
    def variance(estimator):
        est = kl_estimate(P.log(), Q.log(), estimator)
        return (P * (est - EXACT_KL) ** 2).sum().item()

    assert variance("k3") < variance("k1") / 5
    assert (kl_estimate(P.log(), Q.log(), "k3") >= 0).all() and (kl_estimate(P.log(), Q.log(), "k1") < 0).any()


# ---- PPO end to end on a bandit: prompt "go", one token answered, reward 1 for "a" ----

@pytest.fixture
def bandit():
    vocab = {"<eos>": 0, "<pad>": 1, "go": 2, "a": 3, "b": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, eos_token_id=0, pad_token_id=1, bos_token_id=2)
    policy = LlamaForCausalLM(config).eval()
    policy.generation_config.eos_token_id, policy.generation_config.pad_token_id = 0, 1
    return policy, copy.deepcopy(policy), tokenizer


def reward_a(prompts, completions, **columns):
    return [float(c.strip() == "a") for c in completions]


def p_answer(model, tokenizer, token="a"):
    with torch.no_grad():
        logits = model(**tokenizer(["go"], return_tensors="pt", add_special_tokens=False)).logits[0, -1]
    return logits.softmax(-1)[tokenizer.convert_tokens_to_ids(token)].item()


def bandit_config(**overrides):
    return PPOConfig(**({"steps": 6, "prompts_per_step": 16, "learning_rate": 3e-3, "max_new_tokens": 1, "temperature": 1.0,
                         "minibatch_size": 8, "missing_eos_penalty": None, "kl_coef": 0.0} | overrides))


def test_one_update_moves_probability_to_the_rewarded_token(bandit):
    policy, reference, tokenizer = bandit
    before = p_answer(policy, tokenizer)
    log = train_ppo(policy, reference, tokenizer, ["go"], reward_a, bandit_config(steps=1))
    assert 0 < log.reward.iloc[0] < 1  # both kinds of answer were sampled: the update had a signal
    assert p_answer(policy, tokenizer) > before + 0.05
    assert p_answer(reference, tokenizer) == pytest.approx(before)  # the reference is untouched


def test_a_large_kl_coef_keeps_the_policy_at_the_reference(bandit):
    policy, reference, tokenizer = bandit
    start = p_answer(reference, tokenizer)
    free = copy.deepcopy(policy)
    train_ppo(free, reference, tokenizer, ["go"], reward_a, bandit_config(kl_coef=0.0))
    train_ppo(policy, reference, tokenizer, ["go"], reward_a, bandit_config(kl_coef=20.0))
    assert p_answer(free, tokenizer) - start > 0.3
    assert abs(p_answer(policy, tokenizer) - start) < (p_answer(free, tokenizer) - start) / 3


def test_seeds_reproduce(bandit):
    policy, reference, tokenizer = bandit
    runs = []
    for seed in (0, 0, 1):
        model = copy.deepcopy(policy)
        log = train_ppo(model, reference, tokenizer, ["go", "go a"], reward_a, bandit_config(steps=2, seed=seed))
        runs.append((log.drop(columns="seconds"), p_answer(model, tokenizer)))
    assert runs[0][0].equals(runs[1][0]) and runs[0][1] == runs[1][1]
    assert not runs[0][0].equals(runs[2][0])


def test_reward_columns_are_passed_through_and_the_value_model_starts_at_zero(bandit):
    policy, reference, tokenizer = bandit
    seen = []

    def reward(prompts, completions, answer, **columns):
        seen.extend(answer)
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    value_model = ValueModel(policy)
    ids = tokenizer(["go a b"], return_tensors="pt")
    assert value_model(ids.input_ids, ids.attention_mask, torch.arange(3)[None]).abs().max() == 0
    train_ppo(policy, reference, tokenizer, [{"prompt": "go", "answer": "b"}], reward, bandit_config(steps=1, prompts_per_step=8),
              value_model=value_model)
    assert seen == ["b"] * 8


def test_log_probs_are_scored_at_the_sampling_temperature(bandit):
    policy, _, tokenizer = bandit
    ids = torch.tensor([[2, 3, 4]])
    taken, _ = response_logprobs(policy, ids, torch.ones_like(ids), 1, temperature=0.5)
    logits = policy(input_ids=ids).logits[0, :2] / 0.5
    assert taken[0].tolist() == pytest.approx(logits.log_softmax(-1)[[0, 1], [3, 4]].tolist(), abs=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be >= 1"), ("kl_estimator", "k2", "kl_estimator must be one of"),
    ("minibatch_size", 32, "exceeds prompts_per_step"), ("temperature", 0.0, "temperature must be > 0"),
    ("lam", 1.5, "gamma and lam must be in"), ("kl_coef", -1.0, "kl_coef and vf_coef must be >= 0"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        bandit_config(**{field: value})


def test_a_value_model_from_a_reward_model_starts_as_its_head_and_trains(bandit):
    from transformers import LlamaForSequenceClassification

    policy, _, _ = bandit
    reward_model = LlamaForSequenceClassification(policy.config.__class__(**(policy.config.to_dict() | {"num_labels": 1})))
    reward_model.requires_grad_(False)
    value_model = ValueModel(reward_model)
    assert torch.equal(value_model.head.weight, reward_model.score.weight) and value_model.head.weight.abs().sum() > 0
    assert all(p.requires_grad for p in value_model.parameters())
    ids = torch.tensor([[2, 3, 4]])
    hidden = reward_model.model(input_ids=ids).last_hidden_state
    values = value_model(ids, torch.ones_like(ids), torch.arange(3)[None])
    assert values[0].tolist() == pytest.approx(reward_model.score(hidden)[0, :, 0].tolist(), abs=1e-5)
