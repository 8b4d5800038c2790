import pytest
import torch

from labkit import tasks
from labkit.profiles import Profile, get_profile
from labkit.train import loss_curves, precision_args, sft, sft_config


def test_cpu_config_defaults_and_overrides():
    cfg = sft_config(get_profile("cpu-tiny"), max_steps=7)
    assert cfg.max_steps == 7 and cfg.use_cpu and not cfg.bf16 and cfg.report_to == []
    assert cfg.completion_only_loss and cfg.save_strategy == "no"
    assert cfg.per_device_train_batch_size == get_profile("cpu-tiny").batch_size


@pytest.mark.slow
def test_a_short_sft_run_lowers_the_loss_on_its_own_data(base):
    import copy

    model, tokenizer = copy.deepcopy(base[0]), base[1]
    data = tasks.verifiable_tasks(8, fmt="completion", tasks=["reverse"])
    cfg = sft_config(get_profile("cpu-tiny"), max_steps=30, per_device_train_batch_size=8, learning_rate=3e-3,
                     logging_steps=5, eval_strategy="steps", eval_steps=10)
    trainer = sft(model, tokenizer, data, cfg, eval_dataset=data)
    curves = loss_curves(trainer)
    assert len(curves["train"]) == 6 and len(curves["eval"]) == 3
    assert curves["eval"][-1][1] < curves["eval"][0][1]


def test_early_stopping_needs_validation(base):
    cfg = sft_config(get_profile("cpu-tiny"), max_steps=1)
    with pytest.raises(ValueError, match="early stopping needs an eval_dataset"):
        sft(base[0], base[1], tasks.verifiable_tasks(1, fmt="completion"), cfg, early_stopping_patience=2)


@pytest.mark.slow
def test_a_copy_of_a_trained_model_runs_its_own_weights(base):
    """TRL patches forward per instance with a closure over the original; sft() removes the patch."""
    import copy

    import torch

    model, tokenizer = copy.deepcopy(base[0]), base[1]
    trainer = sft(model, tokenizer, tasks.verifiable_tasks(4, fmt="completion", tasks=["flip"]),
                  sft_config(get_profile("cpu-tiny"), max_steps=1, per_device_train_batch_size=4))
    assert "forward" not in trainer.model.__dict__
    twin = copy.deepcopy(trainer.model)
    with torch.no_grad():
        twin.lm_head.weight.mul_(1.5)
        ids = torch.tensor([[5, 6, 7, 8]])
        assert (twin(input_ids=ids).logits - trainer.model(input_ids=ids).logits).abs().max() > 1e-3


def test_without_the_cleanup_a_copy_runs_the_original(base):
    """Documents the TRL behaviour remove_fused_forward undoes; fails if TRL stops patching this way."""
    import copy

    import torch
    from trl.trainer.utils import add_fused_lm_head

    from labkit.train import remove_fused_forward

    model = copy.deepcopy(base[0])
    add_fused_lm_head(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.mul_(1.5)
        ids = torch.tensor([[5, 6, 7, 8]])
        assert torch.equal(twin(input_ids=ids).logits, model(input_ids=ids).logits)  # the copy's change is ignored
        assert remove_fused_forward(twin) == 1
        assert not torch.equal(twin(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("profile, expected", [
    (get_profile("cpu-tiny"), {"bf16": False, "fp16": False}),
    (get_profile("gpu-rehearsal"), {"bf16": True, "fp16": False}),
    (Profile("t4", "m", "cuda", "float16", 1, 1, 1, 64), {"bf16": False, "fp16": True}),
    (Profile("a100", "m", "cuda", "bfloat16", 1, 1, 1, 64), {"bf16": True, "fp16": False}),
])
def test_precision_is_decided_in_one_place_per_profile(profile, expected):
    assert precision_args(profile) == expected
    assert profile.precision == {(False, False): "fp32", (True, False): "bf16-mixed", (False, True): "fp16-mixed"}[
        (expected["bf16"], expected["fp16"])]


def test_assistant_only_loss_is_refused_with_a_template_without_generation_markers(base):
    import copy

    from labkit.hubstyle import CHAT_TEMPLATE

    tokenizer = copy.deepcopy(base[1])
    tokenizer.chat_template = CHAT_TEMPLATE
    cfg = sft_config(get_profile("cpu-tiny"), max_steps=1, assistant_only_loss=True, completion_only_loss=False)
    with pytest.raises(ValueError, match=r"no \{% generation %\} markers|has none"):
        sft(base[0], tokenizer, tasks.verifiable_tasks(1, fmt="chat"), cfg)


@pytest.mark.slow
def test_mixed_precision_updates_fp32_master_weights(tmp_path):
    """bf16 autocast over fp32 weights: the trained weights stay fp32 and move by less than bf16 could hold."""
    import labkit

    profile = get_profile("gpu-rehearsal")
    model, tokenizer = labkit.load_model(profile)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    trainer = sft(model, tokenizer, tasks.verifiable_tasks(4, fmt="completion", tasks=["flip"]),
                  sft_config(profile, max_steps=2, learning_rate=1e-5, output_dir=str(tmp_path)))
    after = trainer.model.model.layers[0].mlp.up_proj.weight.detach()
    assert after.dtype == torch.float32 and not torch.equal(after, before)
    # With pure bf16 weights most of these updates would round away: bf16 keeps 8 bits of mantissa.
    changed = after != before
    lost_in_bf16 = after.to(torch.bfloat16).float() == before.to(torch.bfloat16).float()
    assert (changed & lost_in_bf16).float().mean() > 0.5


def _fused_step(model, ids, labels):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out.loss.detach(), out.entropy.detach(), out.is_top1.detach(), grads


def test_scoring_labelled_positions_only_changes_nothing_but_the_work(base):
    """The CPU then takes TRL's GPU path (only labelled positions projected): same loss, metrics and gradients."""
    import copy

    from trl.trainer.utils import add_fused_lm_head

    from labkit.train import labelled_positions_only

    model = copy.deepcopy(base[0])
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (3, 12), generator=gen)
    labels = ids.clone()
    labels[:, :8] = -100  # a prompt of 8 tokens: its positions carry no label
    labels[2, 8:] = -100  # and one row with no label at all
    every = _fused_step(model, ids, labels)
    with labelled_positions_only() as switched:
        only_labelled = _fused_step(model, ids, labels)
    assert switched
    for a, b in zip(every, only_labelled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_switch_is_undone_after_the_block():
    from trl.trainer import utils as trl_utils

    from labkit.train import labelled_positions_only

    original = trl_utils._use_triton
    cpu = torch.device("cpu")
    assert not original(cpu)
    with labelled_positions_only():
        assert trl_utils._use_triton(cpu)
    assert trl_utils._use_triton is original
    with pytest.raises(RuntimeError), labelled_positions_only():
        raise RuntimeError("a failing training run")
    assert trl_utils._use_triton is original


@pytest.mark.slow
def test_after_mixed_precision_training_the_model_runs_its_own_fp32_forward(base):
    """accelerate leaves an autocast wrapper on a model trained with bf16: sft() removes it (and TRL's fused head)."""
    import copy

    model, tokenizer = copy.deepcopy(base[0]), base[1]
    cfg = sft_config(get_profile("cpu-tiny"), max_steps=1, per_device_train_batch_size=2, bf16=True)
    trained = sft(model, tokenizer, tasks.verifiable_tasks(2, fmt="completion", tasks=["flip"]), cfg).model
    assert "_original_forward" not in vars(trained) and "forward" not in vars(trained)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        logits = trained(input_ids=ids).logits
        plain = type(trained).forward(trained, input_ids=ids).logits
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
